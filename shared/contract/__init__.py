"""The contract: settings, the encoder and its models, message schemas, input validation, errors."""
