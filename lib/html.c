#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "html.h"

/* U+FFFD REPLACEMENT CHARACTER, for control characters in text. */
#define REPLACEMENT "\xEF\xBF\xBD"

int
html_escape(struct buf *out, const char *s)
{
	const char *run = s, *rep;
	unsigned char c;

	if (s == NULL)
		return 0;
	for (;; s++) {
		c = (unsigned char)*s;
		switch (c) {
		case '&': rep = "&amp;"; break;
		case '<': rep = "&lt;"; break;
		case '>': rep = "&gt;"; break;
		case '"': rep = "&quot;"; break;
		case '\'': rep = "&#39;"; break;
		case '\t': case '\n': case '\r': rep = NULL; break;
		default: rep = (c < 0x20 || c == 0x7f) && c != 0 ? REPLACEMENT : NULL; break;
		}
		if (rep == NULL && c != 0)
			continue;
		/* Copy the plain run before the character in one go. */
		if (buf_add(out, run, (size_t)(s - run)) == -1)
			return -1;
		if (c == 0)
			return 0;
		if (buf_addstr(out, rep) == -1)
			return -1;
		run = s + 1;
	}
}

static void
fail_if(struct html *h, int rc)
{
	if (rc == -1)
		h->failed = 1;
}

void
html_raw(struct html *h, const char *markup)
{
	if (!h->failed)
		fail_if(h, buf_addstr(&h->b, markup));
}

void
html_rawf(struct html *h, const char *fmt, ...)
{
	va_list ap;

	if (h->failed)
		return;
	va_start(ap, fmt);
	fail_if(h, buf_vprintf(&h->b, fmt, ap));
	va_end(ap);
}

void
html_txt(struct html *h, const char *s)
{
	if (!h->failed)
		fail_if(h, html_escape(&h->b, s));
}

void
html_attr(struct html *h, const char *s)
{
	/* Inside double quotes nothing but & and " would need escaping; the rest is harmless. */
	html_txt(h, s);
}

void
html_url_arg(struct html *h, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	unsigned char c;

	for (; s && *s && !h->failed; s++) {
		c = (unsigned char)*s;
		/* RFC 3986 2.3: unreserved characters stay; everything else, space included, is %XX. */
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~')
			fail_if(h, buf_addch(&h->b, (char)c));
		else
			fail_if(h, buf_printf(&h->b, "%%%c%c", hex[c >> 4], hex[c & 15]));
	}
}

/* Digits of v with a comma every three, into out (at least 32 bytes). */
static void
group_digits(unsigned long long v, char *out)
{
	char digits[24];
	int n = snprintf(digits, sizeof(digits), "%llu", v), i, o = 0;

	for (i = 0; i < n; i++) {
		if (i > 0 && (n - i) % 3 == 0)
			out[o++] = ',';
		out[o++] = digits[i];
	}
	out[o] = '\0';
}

static unsigned long long
magnitude(long long v)
{
	return v < 0 ? (unsigned long long)(-(v + 1)) + 1 : (unsigned long long)v;
}

void
html_int(struct html *h, long long v)
{
	char g[32];

	group_digits(magnitude(v), g);
	html_rawf(h, "%s%s", v < 0 ? "-" : "", g);
}

/* Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal). */
static const char *const zero_decimal[] = {
	"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
	"vuv", "xaf", "xof", "xpf",
};

int
html_zero_decimal(const char *currency)
{
	size_t i;

	for (i = 0; currency && i < sizeof(zero_decimal) / sizeof(zero_decimal[0]); i++)
		if (strcasecmp(currency, zero_decimal[i]) == 0)
			return 1;
	return 0;
}

void
html_money(struct html *h, long long minor, const char *currency)
{
	unsigned long long m = magnitude(minor);
	char g[32];
	const char *c;

	if (html_zero_decimal(currency)) {
		group_digits(m, g);
		html_rawf(h, "%s%s", minor < 0 ? "-" : "", g);
	} else {
		group_digits(m / 100, g);
		html_rawf(h, "%s%s.%02llu", minor < 0 ? "-" : "", g, m % 100);
	}
	if (currency == NULL)
		return;
	html_raw(h, "&nbsp;");
	/* Upper case for display; a currency is three letters, but escape it all the same. */
	for (c = currency; *c && !h->failed; c++) {
		char up[2] = { (*c >= 'a' && *c <= 'z') ? (char)(*c - 'a' + 'A') : *c, '\0' };

		html_txt(h, up);
	}
}

void
html_percent(struct html *h, double fraction, int decimals)
{
	if (!isfinite(fraction)) {
		html_raw(h, "&ndash;");
		return;
	}
	html_rawf(h, "%.*f&nbsp;%%", decimals, fraction * 100.0);
}

int
html_failed(const struct html *h)
{
	return h->failed;
}

void
html_free(struct html *h)
{
	buf_free(&h->b);
}
