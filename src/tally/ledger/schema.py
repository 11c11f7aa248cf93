"""The ledger's tables (SQLAlchemy Core). Money is BIGINT minor units; times are BIGINT ms.

The migration in ``migrations/versions`` creates exactly these tables; a test compares the two so
they cannot drift apart. Change both together (a new migration, never an edited old one).
"""

from __future__ import annotations

import sqlalchemy as sa

ID_LEN = 80  # customer ids are <= 64; system ids look like "@card_clearing:USD"
STATUS_LEN = 16

metadata = sa.MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

epochs = sa.Table(
    "epochs",
    metadata,
    sa.Column("epoch_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("namespace", sa.String(ID_LEN), nullable=False),
    sa.Column("shards", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),  # init | rebuild
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),  # building | current | retired
    sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint("kind IN ('init', 'rebuild')", name="ck_epochs_kind"),
    sa.CheckConstraint("status IN ('building', 'current', 'retired')", name="ck_epochs_status"),
)
# At most one current and one building epoch, enforced by the database, not by Python.
sa.Index(
    "uq_epochs_one_current",
    epochs.c.status,
    unique=True,
    sqlite_where=epochs.c.status == "current",
    postgresql_where=epochs.c.status == "current",
)
sa.Index(
    "uq_epochs_one_building",
    epochs.c.status,
    unique=True,
    sqlite_where=epochs.c.status == "building",
    postgresql_where=epochs.c.status == "building",
)

# One logical shard's own epoch inside the current deployment epoch (migration 0007): written by
# a one-shard rebuild on a Redis Cluster (``tally rebuild --shard K``). A shard without a current
# row here is at its deployment epoch (``epochs``); a whole rebuild starts a new deployment epoch,
# so every shard is back at it. At most one current and one building row per (epoch, shard).
shard_epochs = sa.Table(
    "shard_epochs",
    metadata,
    sa.Column("shard_epoch_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("epoch_id", sa.String(ID_LEN), nullable=False),  # the deployment epoch
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),  # building | current | retired
    sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint(
        "status IN ('building', 'current', 'retired')", name="ck_shard_epochs_status"
    ),
    sa.CheckConstraint("shard >= 0", name="ck_shard_epochs_shard"),
)
sa.Index(
    "uq_shard_epochs_one_current",
    shard_epochs.c.epoch_id,
    shard_epochs.c.shard,
    unique=True,
    sqlite_where=shard_epochs.c.status == "current",
    postgresql_where=shard_epochs.c.status == "current",
)
sa.Index(
    "uq_shard_epochs_one_building",
    shard_epochs.c.epoch_id,
    shard_epochs.c.shard,
    unique=True,
    sqlite_where=shard_epochs.c.status == "building",
    postgresql_where=shard_epochs.c.status == "building",
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("credit_limit_minor", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),  # active | suspended | closed
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),  # customer | system
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint("status IN ('active', 'suspended', 'closed')", name="ck_accounts_status"),
    sa.CheckConstraint("kind IN ('customer', 'system')", name="ck_accounts_kind"),
    sa.CheckConstraint("credit_limit_minor >= 0", name="ck_accounts_limit"),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),  # debit | credit
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),  # the customer side
    sa.Column("debit_account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("credit_account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("result", sa.Integer, nullable=False),  # tally.domain.results.Result; 0 moves money
    sa.Column("balance_after_minor", sa.BigInteger, nullable=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("epoch_id", sa.String(ID_LEN), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("stream_ms", sa.BigInteger, nullable=False),
    sa.Column("stream_seq", sa.BigInteger, nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("drained_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kind IN ('debit', 'credit')", name="ck_transfers_kind"),
    sa.CheckConstraint("amount_minor > 0", name="ck_transfers_amount"),
)
sa.Index("ix_transfers_account_ts", transfers.c.account_id, transfers.c.ts_ms, transfers.c.id)
# No index on debit_account_id / credit_account_id (dropped in 0007): one side of every transfer
# is a system account, a hot key that cost the drainer more than the rare reads it served.
sa.Index(
    "ix_transfers_position",
    transfers.c.epoch_id,
    transfers.c.shard,
    transfers.c.stream_ms,
    transfers.c.stream_seq,
)

credit_intents = sa.Table(
    "credit_intents",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("source", sa.String(STATUS_LEN * 2), nullable=False),  # a SystemAccount value
    sa.Column("state", sa.String(STATUS_LEN), nullable=False),  # pending | settled
    sa.Column("result", sa.Integer, nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("settled_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint("state IN ('pending', 'settled')", name="ck_credit_intents_state"),
    sa.CheckConstraint("amount_minor > 0", name="ck_credit_intents_amount"),
)
sa.Index("ix_credit_intents_state_created", credit_intents.c.state, credit_intents.c.created_at_ms)
sa.Index("ix_credit_intents_account", credit_intents.c.account_id)

# Journal entries the drainer could not apply: a transfer id seen again with other parameters,
# a malformed line, or an entry of another epoch. Kept verbatim, counted, never applied.
journal_conflicts = sa.Table(
    "journal_conflicts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("reason", sa.String(STATUS_LEN * 2), nullable=False),
    sa.Column("transfer_id", sa.String(ID_LEN), nullable=True),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("epoch_id", sa.String(ID_LEN), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("stream_ms", sa.BigInteger, nullable=False),
    sa.Column("stream_seq", sa.BigInteger, nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("detected_at_ms", sa.BigInteger, nullable=False),
    # A redelivered entry (crash between commit and XACK) must not be counted twice.
    sa.UniqueConstraint(
        "epoch_id", "shard", "stream_ms", "stream_seq", "line_no", name="uq_journal_conflicts_pos"
    ),
)

# -- auto-recharge (migration 0002) ---------------------------------------------------------------
recharge_rules = sa.Table(
    "recharge_rules",
    metadata,
    sa.Column("account_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("card_id", sa.String(ID_LEN), nullable=False),
    sa.Column("threshold_minor", sa.BigInteger, nullable=False),
    sa.Column("target_minor", sa.BigInteger, nullable=True),  # exactly one of target / fixed
    sa.Column("fixed_minor", sa.BigInteger, nullable=True),
    sa.Column("daily_cap_minor", sa.BigInteger, nullable=False),
    sa.Column("declines_max", sa.Integer, nullable=False),
    sa.Column("consecutive_declines", sa.Integer, nullable=False),
    sa.Column("autopay", sa.String(STATUS_LEN), nullable=False),  # enabled | disabled
    sa.Column("disabled_reason", sa.String(ID_LEN), nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint("autopay IN ('enabled', 'disabled')", name="ck_recharge_rules_autopay"),
    sa.CheckConstraint(
        "(target_minor IS NULL) <> (fixed_minor IS NULL)", name="ck_recharge_rules_amount"
    ),
    sa.CheckConstraint("daily_cap_minor > 0", name="ck_recharge_rules_cap"),
    sa.CheckConstraint("declines_max >= 1", name="ck_recharge_rules_declines"),
)

# One row per recharge: the saga's recovery point is ``phase``. The id is the gateway
# idempotency key AND the credit's transfer id.
recharges = sa.Table(
    "recharges",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    # account_id while open, NULL once finished: UNIQUE = one open recharge per account.
    sa.Column("open_account_id", sa.String(ID_LEN), nullable=True, unique=True),
    sa.Column("opened_by", sa.String(ID_LEN), nullable=True),  # the debit that opened it
    sa.Column("balance_at_open_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("phase", sa.String(STATUS_LEN), nullable=False),
    sa.Column("card_id", sa.String(ID_LEN), nullable=True),
    sa.Column("amount_minor", sa.BigInteger, nullable=True),
    sa.Column("charge_id", sa.String(ID_LEN), nullable=True),
    sa.Column("outcome_reason", sa.String(ID_LEN), nullable=True),
    sa.Column("wait_reason", sa.String(ID_LEN), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(300), nullable=True),
    sa.Column("opened_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("charged_at_ms", sa.BigInteger, nullable=True),
    sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint(
        "phase IN ('opened', 'intent', 'charge_unknown', 'charged', 'credited', "
        "'succeeded', 'declined', 'skipped')",
        name="ck_recharges_phase",
    ),
    sa.CheckConstraint("amount_minor IS NULL OR amount_minor > 0", name="ck_recharges_amount"),
)
sa.Index("ix_recharges_phase_updated", recharges.c.phase, recharges.c.updated_at_ms)
sa.Index("ix_recharges_account_charged", recharges.c.account_id, recharges.c.charged_at_ms)
sa.Index("ix_recharges_charge", recharges.c.charge_id)
sa.Index("ix_recharges_unfinished", recharges.c.finished_at_ms, recharges.c.updated_at_ms)

# The global freeze switch: append-only; the newest row is the current state.
billing_freeze = sa.Table(
    "billing_freeze",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("frozen", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(ID_LEN), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
)

# Why an account was suspended or reinstated (remediation finds wrongful suspensions here).
account_events = sa.Table(
    "account_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("action", sa.String(STATUS_LEN), nullable=False),  # suspended | reinstated
    sa.Column("cause", sa.String(ID_LEN), nullable=False),
    sa.Column("recharge_id", sa.String(ID_LEN), nullable=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint("action IN ('suspended', 'reinstated')", name="ck_account_events_action"),
)
sa.Index("ix_account_events_account", account_events.c.account_id, account_events.c.id)

# Remediation actions, keyed by a deterministic id so a second --apply finds them done.
remediations = sa.Table(
    "remediations",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),  # credit | refund | reinstate
    sa.Column("account_id", sa.String(ID_LEN), nullable=True),
    sa.Column("charge_id", sa.String(ID_LEN), nullable=True),
    sa.Column("amount_minor", sa.BigInteger, nullable=True),
    sa.Column("currency", sa.String(3), nullable=True),
    sa.Column("state", sa.String(STATUS_LEN), nullable=False),  # pending | done
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kind IN ('credit', 'refund', 'reinstate')", name="ck_remediations_kind"),
    sa.CheckConstraint("state IN ('pending', 'done')", name="ck_remediations_state"),
)
