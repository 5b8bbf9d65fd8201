-- The schema of the last promptgate before Alembic (schema version 4) on postgresql,
-- as its SQLModel.metadata.create_all made it. Frozen: tests build the
-- databases that promptgate left behind from this (see tests/legacy_db.py).

CREATE TABLE schema_version (
	id INTEGER NOT NULL,
	version INTEGER NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE prompts (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	name VARCHAR(128) NOT NULL,
	description VARCHAR NOT NULL,
	labels JSON NOT NULL,
	archived BOOLEAN NOT NULL,
	latest_version INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_prompts_workspace_name UNIQUE (workspace_id, name)
);

CREATE TABLE release_tag_events (
	seq BIGSERIAL NOT NULL,
	prompt_id VARCHAR(40) NOT NULL,
	tag VARCHAR(64) NOT NULL,
	version_id VARCHAR(40) NOT NULL,
	version INTEGER NOT NULL,
	previous_version INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	split JSON,
	PRIMARY KEY (seq)
);

CREATE INDEX ix_tag_events_prompt_seq ON release_tag_events (prompt_id, seq);

CREATE TABLE executions (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	external_id VARCHAR(256),
	state VARCHAR(16) NOT NULL,
	streamed BOOLEAN NOT NULL,
	prompt_id VARCHAR(40),
	prompt_name VARCHAR NOT NULL,
	version_id VARCHAR(40),
	version INTEGER NOT NULL,
	release_tag VARCHAR NOT NULL,
	provider VARCHAR NOT NULL,
	model VARCHAR NOT NULL,
	inputs JSON NOT NULL,
	outputs JSON NOT NULL,
	error JSON,
	finish_reason VARCHAR NOT NULL,
	input_tokens INTEGER NOT NULL,
	output_tokens INTEGER NOT NULL,
	cached_input_tokens INTEGER NOT NULL,
	input_chars INTEGER NOT NULL,
	output_chars INTEGER NOT NULL,
	cost FLOAT NOT NULL,
	priced BOOLEAN NOT NULL,
	latency_ms FLOAT NOT NULL,
	ttft_ms FLOAT,
	attempts INTEGER NOT NULL,
	cache_hit BOOLEAN NOT NULL,
	cache_status VARCHAR NOT NULL,
	api_key_id VARCHAR(40),
	target_index INTEGER NOT NULL,
	attempt_log JSON NOT NULL,
	parameters JSON NOT NULL,
	request_metadata JSON NOT NULL,
	raw JSON NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	completed_at TIMESTAMP WITH TIME ZONE,
	request_fingerprint VARCHAR(64),
	owner VARCHAR(40),
	superseded_key VARCHAR(256),
	split_id VARCHAR(40),
	chain_execution_id VARCHAR(40),
	chain_step VARCHAR(64),
	PRIMARY KEY (id),
	CONSTRAINT uq_executions_external_id UNIQUE (workspace_id, external_id)
);

CREATE INDEX ix_executions_prompt ON executions (workspace_id, prompt_id, id);

CREATE INDEX ix_executions_workspace_id ON executions (workspace_id, id);

CREATE INDEX ix_executions_chain ON executions (chain_execution_id);

CREATE INDEX ix_executions_api_key ON executions (api_key_id, created_at);

CREATE TABLE actuals (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	execution_id VARCHAR(40) NOT NULL,
	quality FLOAT,
	desired_output VARCHAR NOT NULL,
	actual_metadata JSON NOT NULL,
	observed_at TIMESTAMP WITH TIME ZONE NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_actuals_execution ON actuals (execution_id, created_at);

CREATE TABLE chains (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	name VARCHAR(128) NOT NULL,
	description VARCHAR NOT NULL,
	labels JSON NOT NULL,
	archived BOOLEAN NOT NULL,
	latest_version INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_chains_workspace_name UNIQUE (workspace_id, name)
);

CREATE TABLE chain_release_tag_events (
	seq BIGSERIAL NOT NULL,
	chain_id VARCHAR(40) NOT NULL,
	tag VARCHAR(64) NOT NULL,
	version_id VARCHAR(40) NOT NULL,
	version INTEGER NOT NULL,
	previous_version INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (seq)
);

CREATE INDEX ix_chain_tag_events_chain_seq ON chain_release_tag_events (chain_id, seq);

CREATE TABLE chain_executions (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	external_id VARCHAR(256),
	request_fingerprint VARCHAR(64),
	superseded_key VARCHAR(256),
	owner VARCHAR(40),
	state VARCHAR(16) NOT NULL,
	streamed BOOLEAN NOT NULL,
	chain_id VARCHAR(40),
	chain_name VARCHAR NOT NULL,
	version_id VARCHAR(40),
	version INTEGER NOT NULL,
	release_tag VARCHAR NOT NULL,
	inputs JSON NOT NULL,
	outputs JSON NOT NULL,
	steps JSON NOT NULL,
	error JSON,
	failed_step VARCHAR NOT NULL,
	input_tokens INTEGER NOT NULL,
	output_tokens INTEGER NOT NULL,
	cached_input_tokens INTEGER NOT NULL,
	input_chars INTEGER NOT NULL,
	output_chars INTEGER NOT NULL,
	cost FLOAT NOT NULL,
	priced BOOLEAN NOT NULL,
	latency_ms FLOAT NOT NULL,
	request_metadata JSON NOT NULL,
	api_key_id VARCHAR(40),
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	completed_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id),
	CONSTRAINT uq_chain_executions_external_id UNIQUE (workspace_id, external_id)
);

CREATE INDEX ix_chain_executions_workspace_id ON chain_executions (workspace_id, id);

CREATE INDEX ix_chain_executions_chain ON chain_executions (workspace_id, chain_id, id);

CREATE TABLE batches (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	display_name VARCHAR NOT NULL,
	state VARCHAR(16) NOT NULL,
	prompt_id VARCHAR(40),
	prompt_name VARCHAR NOT NULL,
	version_id VARCHAR(40),
	version INTEGER NOT NULL,
	release_tag VARCHAR NOT NULL,
	inline_spec JSON,
	parameters JSON NOT NULL,
	max_concurrency INTEGER NOT NULL,
	callback_url VARCHAR NOT NULL,
	batch_metadata JSON NOT NULL,
	total INTEGER NOT NULL,
	succeeded INTEGER NOT NULL,
	rejected INTEGER NOT NULL,
	cancelled INTEGER NOT NULL,
	last_seq INTEGER NOT NULL,
	cancel_requested BOOLEAN NOT NULL,
	error JSON,
	callback_state VARCHAR NOT NULL,
	callback_claimed_by VARCHAR(40),
	callback_attempts INTEGER NOT NULL,
	api_key_id VARCHAR(40),
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE,
	ended_at TIMESTAMP WITH TIME ZONE,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	chain_id VARCHAR(40),
	PRIMARY KEY (id)
);

CREATE INDEX ix_batches_state ON batches (state, created_at);

CREATE TABLE batch_events (
	batch_id VARCHAR(40) NOT NULL,
	seq INTEGER NOT NULL,
	kind VARCHAR(8) NOT NULL,
	item_idx INTEGER,
	state VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (batch_id, seq)
);

CREATE TABLE batch_workers (
	id VARCHAR(40) NOT NULL,
	heartbeat_at TIMESTAMP WITH TIME ZONE NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE batch_callback_attempts (
	id BIGSERIAL NOT NULL,
	batch_id VARCHAR(40) NOT NULL,
	attempt INTEGER NOT NULL,
	status_code INTEGER NOT NULL,
	error VARCHAR NOT NULL,
	duration_ms FLOAT NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_callback_attempts_batch ON batch_callback_attempts (batch_id, attempt);

CREATE TABLE workspaces (
	id VARCHAR(64) NOT NULL,
	name VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE audit_events (
	seq BIGSERIAL NOT NULL,
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	actor VARCHAR(64) NOT NULL,
	action VARCHAR(64) NOT NULL,
	resource VARCHAR(512) NOT NULL,
	before JSON,
	after JSON,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (seq)
);

CREATE INDEX ix_audit_events_workspace_seq ON audit_events (workspace_id, seq);

CREATE INDEX ix_audit_events_resource ON audit_events (workspace_id, resource, seq);

CREATE TABLE partials (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	name VARCHAR(128) NOT NULL,
	description VARCHAR NOT NULL,
	archived BOOLEAN NOT NULL,
	latest_version INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_partials_workspace_name UNIQUE (workspace_id, name)
);

CREATE TABLE prompt_versions (
	id VARCHAR(40) NOT NULL,
	prompt_id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	version INTEGER NOT NULL,
	spec JSON NOT NULL,
	description VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_versions_prompt_version UNIQUE (prompt_id, version),
	FOREIGN KEY(prompt_id) REFERENCES prompts (id)
);

CREATE TABLE release_tags (
	prompt_id VARCHAR(40) NOT NULL,
	tag VARCHAR(64) NOT NULL,
	version_id VARCHAR(40) NOT NULL,
	version INTEGER NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	split JSON,
	PRIMARY KEY (prompt_id, tag),
	FOREIGN KEY(prompt_id) REFERENCES prompts (id)
);

CREATE TABLE chain_versions (
	id VARCHAR(40) NOT NULL,
	chain_id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	version INTEGER NOT NULL,
	spec JSON NOT NULL,
	description VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_chain_versions_chain_version UNIQUE (chain_id, version),
	FOREIGN KEY(chain_id) REFERENCES chains (id)
);

CREATE TABLE chain_release_tags (
	chain_id VARCHAR(40) NOT NULL,
	tag VARCHAR(64) NOT NULL,
	version_id VARCHAR(40) NOT NULL,
	version INTEGER NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (chain_id, tag),
	FOREIGN KEY(chain_id) REFERENCES chains (id)
);

CREATE TABLE batch_items (
	batch_id VARCHAR(40) NOT NULL,
	idx INTEGER NOT NULL,
	custom_id VARCHAR(256) NOT NULL,
	inputs JSON NOT NULL,
	parameters JSON,
	item_metadata JSON NOT NULL,
	state VARCHAR(16) NOT NULL,
	execution_id VARCHAR(40),
	error JSON,
	attempts INTEGER NOT NULL,
	starts INTEGER NOT NULL,
	claimed_by VARCHAR(40),
	claimed_at TIMESTAMP WITH TIME ZONE,
	finished_at TIMESTAMP WITH TIME ZONE,
	seq INTEGER,
	PRIMARY KEY (batch_id, idx),
	CONSTRAINT uq_batch_items_custom_id UNIQUE (batch_id, custom_id),
	FOREIGN KEY(batch_id) REFERENCES batches (id)
);

CREATE INDEX ix_batch_items_state ON batch_items (batch_id, state, idx);

CREATE INDEX ix_batch_items_claimed_by ON batch_items (claimed_by, state);

CREATE TABLE api_keys (
	id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	name VARCHAR NOT NULL,
	secret_sha256 VARCHAR(64) NOT NULL,
	scopes JSON NOT NULL,
	plan VARCHAR(32) NOT NULL,
	limit_overrides JSON NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	expires_at TIMESTAMP WITH TIME ZONE,
	revoked_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id),
	FOREIGN KEY(workspace_id) REFERENCES workspaces (id)
);

CREATE INDEX ix_api_keys_workspace ON api_keys (workspace_id, created_at);

CREATE TABLE partial_versions (
	id VARCHAR(40) NOT NULL,
	partial_id VARCHAR(40) NOT NULL,
	workspace_id VARCHAR(64) NOT NULL,
	version INTEGER NOT NULL,
	content TEXT NOT NULL,
	includes JSON NOT NULL,
	description VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_partial_versions_partial_version UNIQUE (partial_id, version),
	FOREIGN KEY(partial_id) REFERENCES partials (id)
);
