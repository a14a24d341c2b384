# tests/test_ratelimit.py again, through PgBouncer in transaction-pooling mode.
BILLING_TEST_PGBOUNCER=1 exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_ratelimit.py"
