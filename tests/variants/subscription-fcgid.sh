# tests/test_subscription.py again, through Apache + mod_fcgid (the programs as FastCGI processes).
BILLING_TEST_APACHE=fcgid exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_subscription.py"
