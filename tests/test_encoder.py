"""SPEC section 3 edge cases and a property test against the plain-loop reference."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contract.encoder import apply_model, embed, encode_windows, min_rows, to_bytes
from shared.contract.errors import UnknownModel
from shared.contract.models import get_model, validate_models
from tests.support.reference import f32, reference_embedding

REGIME = get_model("num-regime-core-v1")
SIMPLE = get_model("numeric-simple-v1")


def business_rows(start: date, count: int, seed: int = 1) -> list[tuple[date, float, float]]:
    rng = np.random.default_rng(seed)
    rows, d = [], start
    while len(rows) < count:
        if d.weekday() < 5:
            rows.append((d, float(50 + rng.random() * 50), float(rng.integers(0, 10**7))))
        d += timedelta(days=1)
    return rows


def encode(rows, as_of: date, n: int, model) -> bytes | None:
    rows = sorted(rows)
    v = embed(
        np.array([r[0] for r in rows], dtype="datetime64[D]"),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.datetime64(as_of, "D"),
        n,
        model,
    )
    return None if v is None else to_bytes(v)


def test_full_window_layout_is_day_major_close_volume_return():
    rows = business_rows(date(2020, 1, 1), 80)
    as_of = rows[-1][0]
    vec = np.frombuffer(encode(rows, as_of, 63, SIMPLE), dtype="<f4")
    assert vec.shape == (189,)
    last63 = rows[-63:]
    assert vec[0] == np.float32(last63[0][1]) and vec[1] == np.float32(last63[0][2]) and vec[2] == 0.0
    assert vec[3] == np.float32(last63[1][1])
    assert vec[5] == np.float32(np.log(last63[1][1] / last63[0][1]))
    assert vec[-3] == np.float32(last63[-1][1])


def test_padding_seam_uses_float32_rounded_last_value():
    rows = business_rows(date(2020, 1, 1), 60)  # 60 >= int(63*0.87)=54 but < 63: pad 3 rows
    rows[-1] = (rows[-1][0], 100.123456789, 1234567.891)
    as_of = rows[-1][0]
    vec = np.frombuffer(encode(rows, as_of, 63, SIMPLE), dtype="<f4")
    seam = vec[60 * 3 : 61 * 3]
    assert seam[0] == np.float32(100.123456789)
    assert seam[1] == np.float32(1234567.891)
    expected_seam_return = np.float32(np.log(f32(100.123456789) / 100.123456789))
    assert seam[2] == expected_seam_return
    assert seam[2] != 0.0  # tiny, not zero: float32 rounding of the last close
    assert vec[-1] == 0.0  # padded rows after the seam repeat the same close exactly


def test_insufficient_history_below_87_percent():
    n = 63
    assert min_rows(n) == 54
    rows = business_rows(date(2020, 1, 1), 53)
    assert encode(rows, rows[-1][0], n, SIMPLE) is None
    rows = business_rows(date(2020, 1, 1), 54)
    assert encode(rows, rows[-1][0], n, SIMPLE) is not None
    assert min_rows(1) == 1 and min_rows(2) == 1


def test_lookback_is_three_times_window_in_calendar_days_inclusive():
    n = 5  # needs int(4.35) = 4 rows within 15 calendar days
    as_of = date(2021, 3, 31)
    edge = as_of - timedelta(days=15)
    rows = [
        (edge, 10.0, 1.0),
        (as_of - timedelta(days=3), 11.0, 1.0),
        (as_of - timedelta(days=2), 12.0, 1.0),
        (as_of, 13.0, 1.0),
    ]
    assert encode(rows, as_of, n, SIMPLE) is not None  # the edge day counts
    shifted = [(edge - timedelta(days=1), 10.0, 1.0)] + rows[1:]
    assert encode(shifted, as_of, n, SIMPLE) is None  # one day earlier falls out
    future = rows + [(as_of + timedelta(days=1), 99.0, 1.0)]
    assert encode(future, as_of, n, SIMPLE) == encode(rows, as_of, n, SIMPLE)  # rows after as_of ignored


def test_core_model_zero_pads_short_windows_to_384():
    rows = business_rows(date(2020, 1, 1), 70)
    vec = np.frombuffer(encode(rows, rows[-1][0], 63, REGIME), dtype="<f4")
    assert vec.shape == (384,)
    assert np.all(vec[189:] == 0.0)
    assert vec[:189].tobytes() == encode(rows, rows[-1][0], 63, SIMPLE)


def test_core_model_truncates_windows_longer_than_128_days():
    rows = business_rows(date(2019, 1, 1), 200)
    vec = np.frombuffer(encode(rows, rows[-1][0], 150, REGIME), dtype="<f4")
    assert vec.shape == (384,)
    simple = np.frombuffer(encode(rows, rows[-1][0], 150, SIMPLE), dtype="<f4")
    assert simple.shape == (450,)
    assert vec.tobytes() == simple[:384].tobytes()


def test_simple_model_is_3n_long():
    rows = business_rows(date(2020, 1, 1), 30)
    assert len(encode(rows, rows[-1][0], 20, SIMPLE)) == 3 * 20 * 4


def test_zero_volume_is_kept_as_zero():
    rows = business_rows(date(2020, 1, 1), 70)
    rows = [(d, c, 0.0) for d, c, _ in rows]
    vec = np.frombuffer(encode(rows, rows[-1][0], 63, SIMPLE), dtype="<f4")
    assert np.all(vec[1::3] == 0.0)
    assert np.all(np.isfinite(vec))


def test_unknown_model_id_is_a_clear_error():
    with pytest.raises(UnknownModel, match="unknown model_id 'num-nope'"):
        get_model("num-nope")
    with pytest.raises(UnknownModel):
        validate_models(["numeric-simple-v1", "bogus"])


def test_all_core_ids_behave_identically():
    rows = business_rows(date(2020, 1, 1), 70)
    out = {
        encode(rows, rows[-1][0], 63, get_model(m))
        for m in [
            "num-regime-core-v1",
            "num-stab-core-v1",
            "num-profile-core-v1",
            "num-scenario-core-v1",
            "num-portfolio-core-v1",
        ]
    }
    assert len(out) == 1


def test_vectorised_dates_equal_one_at_a_time():
    rows = business_rows(date(2019, 6, 1), 150, seed=4)
    d = np.array([r[0] for r in rows], dtype="datetime64[D]")
    c = np.array([r[1] for r in rows])
    v = np.array([r[2] for r in rows])
    as_of = d[::7]
    batch = encode_windows(d, c, v, as_of, 63)
    flat = apply_model(batch.flat, SIMPLE)
    for i, a in enumerate(batch.as_of):
        assert flat[i].tobytes() == encode(rows, a.astype(object), 63, SIMPLE)
    assert batch.insufficient + batch.as_of.size == as_of.size


row_strategy = st.tuples(
    st.integers(min_value=0, max_value=400),
    st.floats(min_value=0.01, max_value=1e5, allow_nan=False, allow_infinity=False),
    st.one_of(st.just(0.0), st.floats(min_value=0, max_value=1e10, allow_nan=False, allow_infinity=False)),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(row_strategy, min_size=1, max_size=250, unique_by=lambda r: r[0]),
    as_of_offset=st.integers(min_value=0, max_value=450),
    window_days=st.integers(min_value=1, max_value=160),
    model_id=st.sampled_from(["numeric-simple-v1", "num-regime-core-v1", "num-stab-core-v1"]),
)
def test_property_equals_plain_loop_reference(rows, as_of_offset, window_days, model_id):
    base = date(2018, 1, 1)
    dated = [(base + timedelta(days=k), c, v) for k, c, v in rows]
    as_of = base + timedelta(days=as_of_offset)
    expected = reference_embedding(dated, as_of, window_days, model_id)
    assert encode(dated, as_of, window_days, get_model(model_id)) == expected
