# tests/test_usage.py again, through Apache + mod_proxy_fcgi (each program's FastCGI processes started by spawn-fcgi and multiwatch).
BILLING_TEST_APACHE=proxy_fcgi exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_usage.py"
