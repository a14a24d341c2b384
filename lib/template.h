/*
 * Mail templates: UTF-8 text with named placeholders, {{name}} (blanks
 * inside the braces allowed).  There is nothing else to the syntax: no
 * conditions, no loops, no filters, so an operator can reword a mail
 * without learning a language and nothing in a template can run.
 *
 * The caller names the placeholders a template may use; parsing refuses
 * any other name, and any "{{" that does not open a well-formed
 * placeholder, with the line number.  That happens when billing-mailer
 * starts, so a typo is an error on the operator's terminal instead of a
 * blank in a customer's inbox.  Rendering refuses a placeholder whose
 * value is missing for the same reason.
 */
#ifndef TEMPLATE_H
#define TEMPLATE_H

#include <stddef.h>

#include "buf.h"

struct template;

/*
 * Parses text (len bytes; valid UTF-8 without NUL).  names[i] is the
 * placeholder of index i, or NULL when that index may not be used here;
 * n is the number of entries; names must outlive *t (static tables do).  0 and *t (free with template_free), or -1
 * with a message in err ("line 3: unknown placeholder {{plan_name}}").
 */
int template_parse(const char *text, size_t len, const char *const *names, size_t n,
    struct template **t, char *err, size_t errlen) __attribute__((warn_unused_result));

/* template_parse on the contents of a file of at most LIMIT_MAIL_TEMPLATE bytes. */
int template_load(const char *path, const char *const *names, size_t n, struct template **t,
    char *err, size_t errlen) __attribute__((warn_unused_result));

/* Whether t uses the placeholder of index i. */
int template_uses(const struct template *t, size_t i);

enum template_escape {
	TEMPLATE_TEXT,	/* values as they are */
	TEMPLATE_HTML,	/* values with & < > " ' as character references */
};

/*
 * Appends t with values[i] for placeholder i (values has n entries, as
 * names did).  Control characters in values become blanks in both modes:
 * values are one line each.  0; -1 when a used value is NULL (*missing
 * names the placeholder); -2 when out's ceiling is reached.
 */
int template_render(const struct template *t, const char *const *values,
    enum template_escape esc, struct buf *out, const char **missing)
    __attribute__((warn_unused_result));

/*
 * Whether s can go into an href as it is: an https:// URL (or http://
 * unless https_only) of at most LIMIT_MAIL_VALUE bytes without blanks,
 * control or non-ASCII bytes, quotes, angle brackets or backslashes.
 */
int template_url_ok(const char *s, int https_only);

/* Appends s with & < > " ' replaced by character references (HTML 5 13.1.2.6). */
int template_html_escape(struct buf *out, const char *s) __attribute__((warn_unused_result));

/* NULL is fine. */
void template_free(struct template *t);

#endif
