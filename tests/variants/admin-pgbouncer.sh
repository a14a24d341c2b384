# tests/test_admin.py again, through PgBouncer in transaction-pooling mode (the
# dashboard's parallel statements, the actions' transactions and locks).
BILLING_TEST_PGBOUNCER=1 exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_admin.py"
