# tests/test_metrics.py again, through Apache + mod_fcgid: long-lived processes share the counter file.
BILLING_TEST_APACHE=fcgid exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_metrics.py"
