# tests/test_subscription.py again, through PgBouncer in transaction-pooling mode (each
# action holds one transaction, with its advisory lock, across the Stripe calls).
BILLING_TEST_PGBOUNCER=1 exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_subscription.py"
