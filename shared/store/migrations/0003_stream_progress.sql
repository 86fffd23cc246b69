-- depends: 0002_embeddings_unique_key
-- Which ticks the sink has committed, per run and source partition: how a replay knows it is done.
CREATE TABLE IF NOT EXISTS embedder_tick_commits (
    run_id varchar(64) NOT NULL,
    source_partition int NOT NULL,
    as_of_date date NOT NULL,
    embeddings int NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, source_partition, as_of_date)
);
