# tests/test_foundation.py again under prefork + mod_cgi (the default is Debian's event + mod_cgid).
BILLING_TEST_APACHE=cgi exec "${PYTHON3:-python3}" "$SRCDIR/tests/test_foundation.py"
