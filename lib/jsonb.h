/*
 * Making a JSON text storable as PostgreSQL jsonb, for Stripe event
 * payloads: a signed event is recorded even when some of its values
 * cannot be stored, with those values left out and named.
 *
 * jsonb refuses "\u0000" (SQLSTATE 22P05) and a lone UTF-16 surrogate
 * escape (22P02); PostgreSQL's numeric refuses numbers beyond its range;
 * and a string with a NUL cannot become a C string without being cut
 * short (a user id "a\u0000b" would read as "a").  So:
 *   - a string value holding \u0000 or a lone surrogate becomes null;
 *   - such an escape inside a member name becomes \ufffd (the member
 *     stays, under a name nobody looks up);
 *   - a number longer than LIMIT_JSONB_NUMBER_LEN characters, beyond the
 *     range of a double (strtod's ERANGE, e.g. 1e400), or written with an
 *     exponent beyond LIMIT_JSONB_EXPONENT (0e99999999999999999999, which
 *     numeric cannot read), becomes null.
 * Everything else is copied byte for byte.  The output is never longer
 * than the input.
 */
#ifndef JSONB_H
#define JSONB_H

#include <stddef.h>

#include <json-c/json.h>


struct jsonb_fit {
	char *text;			/* NUL-terminated; jsonb_fit_free frees it */
	size_t len;
	int left_out;			/* values left out or renamed */
	struct json_object *paths;	/* array of "a.b.0.c" strings (owned), or NULL */
};

/*
 * Copies len bytes of text into out->text, leaving out what jsonb cannot
 * store (see above), and names each place in out->paths (dotted path;
 * array elements by index; member names as written, non-printable bytes
 * as '?').  0, or -1 when the nesting is deeper than LIMIT_JSON_DEPTH
 * (the text is then no event we accept).  Allocation failure ends the
 * request (mem.h).  The text need not be valid JSON: whatever is not
 * recognised is copied for the parser to judge.
 */
int jsonb_fit(const char *text, size_t len, struct jsonb_fit *out)
    __attribute__((warn_unused_result));

/*
 * Whether PostgreSQL's numeric, and so jsonb, takes the JSON number tok
 * (NUL-terminated, as written): at most LIMIT_JSONB_NUMBER_LEN characters
 * and an exponent within LIMIT_JSONB_EXPONENT either way.  That is the
 * whole rule for numbers a client sends (usage metadata); jsonb_fit also
 * leaves out what a double cannot hold, since payloads fill columns.
 */
int jsonb_number_storable(const char *tok);

/* Frees what jsonb_fit allocated; safe on a zeroed struct. */
void jsonb_fit_free(struct jsonb_fit *fit);

/*
 * Adds path to paths (created on first use) unless LIMIT_JSONB_PATHS are
 * there already; for callers that leave out more values (e.g. a number
 * beyond a column's range).
 */
void jsonb_note_path(struct json_object **paths, const char *path);

#endif
