/*
 * Building HTML pages (cgit's html.c): every byte of a page goes through
 * these functions.  Markup comes only from the program's own literals
 * (html_raw, html_rawf with numbers); every value from the database, from
 * Stripe or from the request (user ids, e-mail addresses, metadata, search
 * terms: all attacker-controlled) goes through html_txt, html_attr or
 * html_url_arg.
 *
 * A page is built whole in memory, then answered (response_body) with its
 * Content-Security-Policy.  The buffer has a ceiling (LIMIT_PAGE); past it
 * the page is marked failed and nothing more is appended, so callers write
 * straight through and check html_failed once at the end.
 */
#ifndef HTML_H
#define HTML_H

#include <stddef.h>

#include "buf.h"
#include "limits.h"

struct html {
	struct buf b;
	int failed;	/* the page outgrew LIMIT_PAGE: answer 500 instead */
};

#define HTML_INIT { BUF_INIT(LIMIT_PAGE), 0 }

/* Markup that is a literal of the program, appended as it is. */
void html_raw(struct html *h, const char *markup);

/*
 * Markup with printf formatting.  The arguments must be numbers or
 * literals of the program, never data: data goes through html_txt.
 */
void html_rawf(struct html *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Text content: & < > " ' become character references; control
 * characters other than tab, LF and CR become U+FFFD.  NULL appends
 * nothing.
 */
void html_txt(struct html *h, const char *s);

/* A double-quoted attribute value (the same escaping as html_txt). */
void html_attr(struct html *h, const char *s);

/*
 * A value inside a URL's query string, written into an href or action
 * attribute: percent-encoded but for RFC 3986's unreserved characters, so
 * the result needs no further escaping.  Query parameters are separated
 * with the literal "&amp;".
 */
void html_url_arg(struct html *h, const char *s);

/* A whole number with thousands separators: 1,234,567. */
void html_int(struct html *h, long long v);

/*
 * An amount in a currency's minor units: "1,234.56 USD" (no decimals for
 * Stripe's zero-decimal currencies, e.g. JPY).  currency NULL: no code.
 */
void html_money(struct html *h, long long minor, const char *currency);

/* A fraction as a percentage with the given decimals: 0.0512 -> "5.1 %". */
void html_percent(struct html *h, double fraction, int decimals);

/* Whether amounts in currency (ISO 4217, any case) have no minor unit at Stripe. */
int html_zero_decimal(const char *currency);

/* Whether the page outgrew its ceiling. */
int html_failed(const struct html *h);

void html_free(struct html *h);

/*
 * html_txt's escaping into a plain buffer (the mailer's HTML templates).
 * 0, or -1 when out's ceiling is reached.
 */
int html_escape(struct buf *out, const char *s) __attribute__((warn_unused_result));

#endif
