-- The three tables of SPEC section 2, created only where the platform has not already made them.
CREATE TABLE IF NOT EXISTS instruments (
    instrument_id varchar(50) PRIMARY KEY,
    issuer_id varchar(50),
    market_id varchar(50),
    asset_class varchar(50) NOT NULL,
    symbol varchar(50) NOT NULL,
    exchange varchar(50),
    currency varchar(10) NOT NULL,
    multiplier float8,
    maturity_date date,
    underlying_instrument_id varchar(50),
    status varchar(20) NOT NULL DEFAULT 'ACTIVE',
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS prices_daily (
    instrument_id varchar(50) NOT NULL,
    trade_date date NOT NULL,
    open float8 NOT NULL,
    high float8 NOT NULL,
    low float8 NOT NULL,
    close float8 NOT NULL,
    adjusted_close float8 NOT NULL,
    volume float8 NOT NULL,
    currency varchar(10) NOT NULL,
    metadata jsonb,
    PRIMARY KEY (instrument_id, trade_date)
);

CREATE TABLE IF NOT EXISTS numeric_window_embeddings (
    embedding_id bigserial PRIMARY KEY,
    entity_type varchar(32) NOT NULL,
    entity_id varchar(64) NOT NULL,
    window_spec jsonb NOT NULL,
    as_of_date date NOT NULL,
    model_id varchar(64) NOT NULL,
    vector bytea,
    vector_ref varchar(255),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS instruments_market_selection_idx
    ON instruments (market_id, asset_class, status, instrument_id);
