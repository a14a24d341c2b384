/* form: application/x-www-form-urlencoded with Stripe's bracket keys. */
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "http.h"
#include "limits.h"
#include "mem.h"
#include "stripe.h"
#include "tap.h"

static void
test_basic(void)
{
	struct form f;

	form_init(&f);
	is_str(form_str(&f), "", "empty form is the empty string");
	is_int(form_len(&f), 0, "empty form has length 0");
	ok(form_add(&f, "mode", "subscription") == 0, "plain pair");
	ok(form_add(&f, "line_items[0][price]", "price_123") == 0, "bracket key");
	ok(form_add_long(&f, "line_items[0][quantity]", 1) == 0, "integer value");
	ok(form_add(&f, "allow_promotion_codes", "true") == 0, "boolean value");
	is_str(form_str(&f),
	       "mode=subscription&line_items[0][price]=price_123&line_items[0][quantity]=1"
	       "&allow_promotion_codes=true",
	       "pairs joined with &, brackets literal");
	is_int(form_len(&f), strlen(form_str(&f)), "length matches");
	form_free(&f);
}

static void
test_encoding(void)
{
	struct form f;

	form_init(&f);
	ok(form_add(&f, "success_url",
		    "https://app.example.test/ok?session_id={CHECKOUT_SESSION_ID}&a=b c") == 0,
	   "url value");
	is_str(
	    form_str(&f),
	    "success_url=https%3A%2F%2Fapp.example.test%2Fok%3Fsession_id%3D%7BCHECKOUT_SESSION_ID"
	    "%7D%26a%3Db%20c",
	    "reserved characters, braces and space percent-encoded");
	form_free(&f);

	form_init(&f);
	ok(form_add(&f, "metadata[user id&x=y]", "\xc3\xa9+%\n") == 0, "odd key and value");
	is_str(form_str(&f), "metadata[user%20id%26x%3Dy]=%C3%A9%2B%25%0A",
	       "key parts encoded (no injection of pairs), UTF-8 and controls encoded");
	form_free(&f);

	form_init(&f);
	ok(form_add(&f, "metadata[userId]", "") == 0, "empty value allowed (Stripe: unset)");
	is_str(form_str(&f), "metadata[userId]=", "empty value encoded as key=");
	ok(form_add_long(&f, "n", -42) == 0 && strstr(form_str(&f), "&n=-42") != NULL,
	   "negative integer");
	ok(form_add_long(&f, "big", 9223372036854775807LL) == 0 &&
	       strstr(form_str(&f), "&big=9223372036854775807") != NULL,
	   "LLONG_MAX");
	form_free(&f);
}

static void
test_rejects(void)
{
	struct form f;

	form_init(&f);
	ok(form_add(&f, "", "x") == -1, "empty key rejected");
	ok(form_add(&f, NULL, "x") == -1, "NULL key rejected");
	ok(form_add(&f, "k", NULL) == -1, "NULL value rejected");
	is_str(form_str(&f), "", "rejections leave the form unchanged");
	form_free(&f);
}

static void
test_cap(void)
{
	struct form f;
	char *big = mem_alloc(LIMIT_FORM_BODY);
	size_t before;
	int i, rc = 0;

	memset(big, 'a', LIMIT_FORM_BODY - 1);
	big[LIMIT_FORM_BODY - 1] = '\0';
	form_init(&f);
	ok(form_add(&f, "a", "b") == 0, "small pair before the cap");
	before = form_len(&f);
	ok(form_add(&f, "big", big) == -1, "pair past LIMIT_FORM_BODY rejected");
	is_int(form_len(&f), before, "failed add rolled back (length)");
	is_str(form_str(&f), "a=b", "failed add rolled back (content)");
	/* Percent-encoding triples the size: the cap applies to the encoded body. */
	memset(big, '/', LIMIT_FORM_BODY / 3);
	big[LIMIT_FORM_BODY / 3] = '\0';
	ok(form_add(&f, "slashes", big) == -1, "cap counts encoded bytes");
	for (i = 0; i < 100000 && rc == 0; i++)
		rc = form_add(&f, "k", "v");
	ok(rc == -1 && form_len(&f) <= LIMIT_FORM_BODY, "many pairs stop at the cap");
	form_free(&f);
	form_free(NULL);
	ok(1, "form_free(NULL) is fine");
	free(big);
}

static void
test_idempotency_keys(void)
{
	const char *a[] = {"customer", "42"}, *b[] = {"customer", "4", "2"},
		   *c[] = {"customer4", "2"};
	char *k1 = stripe_idempotency_key("cus", a, 2), *k2 = stripe_idempotency_key("cus", a, 2),
	     *k3 = stripe_idempotency_key("cus", b, 3), *k4 = stripe_idempotency_key("cus", c, 2),
	     *r1 = stripe_random_idempotency_key("cs"), *r2 = stripe_random_idempotency_key("cs");

	is_str(k1, k2, "derived key is stable");
	ok(strncmp(k1, "cus-", 4) == 0 && strlen(k1) == 4 + 64, "derived key: prefix + 64 hex");
	ok(strcmp(k1, k3) != 0 && strcmp(k1, k4) != 0, "part boundaries matter");
	ok(strncmp(r1, "cs-", 3) == 0 && strlen(r1) == 3 + 32, "random key: prefix + 32 hex");
	ok(strcmp(r1, r2) != 0, "random keys differ");
	free(k1);
	free(k2);
	free(k3);
	free(k4);
	free(r1);
	free(r2);
}

static void
test_url_policy(void)
{
	ok(http_url_allowed("https://api.stripe.com/v1/customers"), "https to any host");
	ok(http_url_allowed("http://127.0.0.1:8080/v1/x"), "http to 127.0.0.1");
	ok(http_url_allowed("http://localhost:1/v1/x"), "http to localhost");
	ok(http_url_allowed("http://[::1]:1/v1/x"), "http to [::1]");
	ok(!http_url_allowed("http://api.stripe.com/v1/x"), "http to a remote host refused");
	ok(!http_url_allowed("http://127.0.0.1.evil.example/"), "loopback-looking name refused");
	ok(!http_url_allowed("https://user:pw@api.stripe.com/"), "userinfo refused");
	ok(!http_url_allowed("ftp://127.0.0.1/"), "other schemes refused");
	ok(!http_url_allowed("api.stripe.com/v1"), "no scheme refused");
	ok(!http_url_allowed(NULL), "NULL refused");
	/* Hosted pages handed to the browser: Stripe's, or the local simulator's. */
	ok(stripe_page_url_ok("https://checkout.stripe.com/c/pay/cs_test_a1"), "Checkout page");
	ok(stripe_page_url_ok("http://127.0.0.1:40123/p/session/test_x"), "simulator page");
	ok(!stripe_page_url_ok("http://checkout.stripe.com/c/pay/cs_test_a1"),
	   "plain http to Stripe refused");
	ok(!stripe_page_url_ok("javascript:alert(1)"), "a script URL refused");
	ok(!stripe_page_url_ok(NULL), "no url refused");
}

int
main(void)
{
	test_basic();
	test_encoding();
	test_rejects();
	test_cap();
	test_idempotency_keys();
	test_url_policy();
	return done_testing();
}
