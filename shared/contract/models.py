"""The model registry of SPEC section 3: how a flat window vector becomes a stored vector."""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract.errors import UnknownModel

CORE_DIMENSION = 384


@dataclass(frozen=True)
class ModelSpec:
    """A model: `dimension=None` keeps the flat 3*N vector, else cut or zero-pad to it."""

    model_id: str
    dimension: int | None

    def output_length(self, window_days: int) -> int:
        """Length of the stored vector for a window of `window_days`."""
        return 3 * window_days if self.dimension is None else self.dimension


_CORE_IDS = (
    "num-regime-core-v1",
    "num-stab-core-v1",
    "num-profile-core-v1",
    "num-scenario-core-v1",
    "num-portfolio-core-v1",
)
MODELS: dict[str, ModelSpec] = {m: ModelSpec(m, CORE_DIMENSION) for m in _CORE_IDS}
MODELS["numeric-simple-v1"] = ModelSpec("numeric-simple-v1", None)

DEFAULT_MODEL_ID = "numeric-simple-v1"


def get_model(model_id: str) -> ModelSpec:
    """The spec for `model_id`, or UnknownModel naming the known ones."""
    try:
        return MODELS[model_id]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UnknownModel(f"unknown model_id {model_id!r} (known: {known})") from None


def validate_models(model_ids: list[str]) -> list[ModelSpec]:
    """Specs for all ids, failing on the first unknown one before any work starts."""
    return [get_model(m) for m in dict.fromkeys(model_ids)]
