/*
 * lib/auth form tokens (the console's CSRF defence): a token is good for
 * its operator and form only, within LIMIT_ADMIN_FORM_SECONDS, not when
 * changed in any part, and each carries its own nonce.  Keys: ADMIN_CSRF_SECRET
 * (at least 32 bytes) or one derived from STRIPE_SECRET_KEY.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "limits.h"
#include "tap.h"

int
main(void)
{
	char *t = NULL, *t2 = NULL, *nonce = NULL, *n2 = NULL, *bad;
	time_t now = 1800000000;
	size_t len;

	unsetenv("ADMIN_CSRF_SECRET");
	unsetenv("STRIPE_SECRET_KEY");
	config_reset();
	is_int(auth_form_token("ops", "cancel_now\nu1\nsub_1", now, &t), OUT_MISCONFIGURED,
	    "no key at all: misconfigured");
	setenv("ADMIN_CSRF_SECRET", "short", 1);
	is_int(auth_form_token("ops", "f", now, &t), OUT_MISCONFIGURED,
	    "ADMIN_CSRF_SECRET under 32 bytes: misconfigured");
	setenv("ADMIN_CSRF_SECRET", "0123456789abcdef0123456789abcdef-csrf", 1);

	is_int(auth_form_token("ops", "cancel_now\nu1\nsub_1", now, &t), OUT_OK, "token made");
	is_int(auth_form_check(t, "ops", "cancel_now\nu1\nsub_1", now + 10, &nonce), OUT_OK,
	    "and accepted for the same operator and form");
	ok(nonce && strlen(nonce) == 32, "with its 32-digit nonce");
	is_int(auth_form_token("ops", "cancel_now\nu1\nsub_1", now, &t2), OUT_OK, "a second token");
	is_int(auth_form_check(t2, "ops", "cancel_now\nu1\nsub_1", now, &n2), OUT_OK, "accepted");
	ok(nonce && n2 && strcmp(nonce, n2) != 0, "each form has its own nonce");
	free(n2);
	n2 = NULL;

	is_int(auth_form_check(t, "eve", "cancel_now\nu1\nsub_1", now, &n2), OUT_FORBIDDEN,
	    "another operator: refused");
	is_int(auth_form_check(t, "ops", "cancel_now\nu1\nsub_2", now, &n2), OUT_FORBIDDEN,
	    "another subscription: refused");
	is_int(auth_form_check(t, "ops", "resume\nu1\nsub_1", now, &n2), OUT_FORBIDDEN,
	    "another action: refused");
	is_int(auth_form_check(t, "ops", "cancel_now\nu1\nsub_1", now + LIMIT_ADMIN_FORM_SECONDS + 1,
	    &n2), OUT_FORBIDDEN, "expired: refused");
	is_int(auth_form_check(t, "ops", "cancel_now\nu1\nsub_1", now - 3600, &n2), OUT_FORBIDDEN,
	    "from the future: refused");
	is_int(auth_form_check(NULL, "ops", "f", now, &n2), OUT_FORBIDDEN, "no token: refused");
	is_int(auth_form_check("", "ops", "f", now, &n2), OUT_FORBIDDEN, "empty token: refused");

	/* Every single-character change anywhere is refused. */
	len = strlen(t);
	bad = strdup(t);
	{
		size_t i;
		int all = 1;

		for (i = 0; i < len; i++) {
			bad[i] = bad[i] == '1' ? '2' : '1';
			if (auth_form_check(bad, "ops", "cancel_now\nu1\nsub_1", now, &n2) != OUT_FORBIDDEN)
				all = 0;
			free(n2);
			n2 = NULL;
			bad[i] = t[i];
		}
		ok(all, "each of the %zu characters changed: refused", len);
	}
	/* The time moved forward, MAC kept: refused. */
	bad[0] = bad[0] == '1' ? '2' : '1';
	is_int(auth_form_check(bad, "ops", "cancel_now\nu1\nsub_1", now, &n2), OUT_FORBIDDEN,
	    "a changed time: refused");
	free(bad);

	/* Length prefixes: shifting a separator between operator and form changes the MAC. */
	free(t2);
	is_int(auth_form_token("op", "s\nx", now, &t2), OUT_OK, "token for (op, s\\nx)");
	is_int(auth_form_check(t2, "ops", "\nx", now, &n2), OUT_FORBIDDEN,
	    "not good for (ops, \\nx)");

	/* Derived key: a token made under one key is refused under another. */
	unsetenv("ADMIN_CSRF_SECRET");
	setenv("STRIPE_SECRET_KEY", "sk_test_one", 1);
	free(t2);
	is_int(auth_form_token("ops", "f", now, &t2), OUT_OK, "key derived from STRIPE_SECRET_KEY");
	is_int(auth_form_check(t, "ops", "cancel_now\nu1\nsub_1", now, &n2), OUT_FORBIDDEN,
	    "a token of the other key: refused");
	setenv("STRIPE_SECRET_KEY", "sk_test_two", 1);
	is_int(auth_form_check(t2, "ops", "f", now, &n2), OUT_FORBIDDEN,
	    "a rotated Stripe key refuses older forms");

	free(t);
	free(t2);
	free(nonce);
	free(n2);
	return done_testing();
}
