/*
 * checkout: which successUrl/cancelUrl values ALLOWED_REDIRECT_HOSTS
 * lets through.  Hosts are compared case-insensitively and ports as
 * origins: an entry without a port means the scheme's default port.
 */
#include <stdlib.h>

#include "checkout.h"
#include "tap.h"

static void
allowed(const char *url, int want)
{
	const char *why = checkout_redirect_problem(url);

	ok((why == NULL) == want, "%s %s", url, want ? "allowed" : "refused");
	if ((why == NULL) != want)
		printf("#   reason: %s\n", why ? why : "(none)");
}

int
main(void)
{
	setenv("ALLOWED_REDIRECT_HOSTS", " app.example.com , app.example.com:8443,"
	       "Other.Example.com:80, [::1]:3000, localhost:3000, bad.example.com:99999,"
	       "bad2.example.com:", 1);

	/* An entry without a port: only the scheme's default, written or not. */
	allowed("https://app.example.com/ok", 1);
	allowed("https://APP.example.COM/ok", 1);
	allowed("https://app.example.com:443/ok", 1);
	allowed("http://app.example.com/ok", 1);
	allowed("http://app.example.com:80/ok", 1);
	allowed("https://app.example.com:80/ok", 0);
	allowed("http://app.example.com:443/ok", 0);
	allowed("https://app.example.com:9443/ok", 0);

	/* An entry with a port: that port. */
	allowed("https://app.example.com:8443/ok", 1);
	allowed("http://app.example.com:8443/ok", 1);
	allowed("http://other.example.com/ok", 1);
	allowed("https://other.example.com/ok", 0);
	allowed("https://other.example.com:80/ok", 1);
	allowed("http://localhost:3000/billing", 1);
	allowed("http://localhost/billing", 0);
	allowed("http://localhost:3001/billing", 0);
	allowed("http://[::1]:3000/x", 1);
	allowed("http://[::1]/x", 0);

	/* Malformed entries never match; malformed URLs are refused. */
	allowed("http://bad.example.com/", 0);
	allowed("http://bad2.example.com/", 0);
	allowed("https://app.example.com:0/", 0);
	allowed("https://app.example.com:65536/", 0);
	allowed("https://app.example.com:/", 0);
	allowed("https://app.example.com:84a3/", 0);
	allowed("https://app.example.com.evil.example/", 0);
	allowed("https://app.example.com@evil.example/", 0);
	allowed("https://[::1/", 0);

	unsetenv("ALLOWED_REDIRECT_HOSTS");
	allowed("https://app.example.com/ok", 0);
	return done_testing();
}
