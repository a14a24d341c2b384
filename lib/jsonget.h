/*
 * JSON in: strict parsing and typed getters over json-c, plus
 * declarative field tables (kcgi's validator tables) so an endpoint
 * states its fields once and validation runs before the handler.
 * Getters return NULL / -1 on a missing key or a wrong type, never a
 * coerced value (acme-client's getters).
 */
#ifndef JSONGET_H
#define JSONGET_H

#include <stddef.h>

#include <json-c/json.h>

#include "outcome.h"

/*
 * How usable text is as JSON (RFC 8259), judged over the raw bytes:
 *   JSONGET_STRICT   exactly one RFC 8259 value (numbers as the grammar
 *                    says: no NaN, Infinity, "1.", leading zeros), strings
 *                    of valid UTF-8 without raw control characters, every
 *                    \u escape a Unicode scalar value (surrogates only in
 *                    pairs) other than U+0000, nesting at most
 *                    LIMIT_JSON_DEPTH containers.  Safe as C strings and
 *                    as PostgreSQL jsonb.
 *   JSONGET_LOOSE    the same grammar, but some string value holds a lone
 *                    surrogate escape or \u0000 (or a member name holds a
 *                    lone surrogate): JSON that RFC 8259 8.2 calls
 *                    unpredictable and jsonb refuses.  A signed Stripe
 *                    event may still need to be read.
 *   JSONGET_INVALID  anything else (also \u0000 in a member name, which
 *                    json-c would cut short).
 * The order matters: a worse grade compares greater.
 */
enum jsonget_grade {
	JSONGET_STRICT,
	JSONGET_LOOSE,
	JSONGET_INVALID,
	JSONGET__MAX
};

enum jsonget_grade jsonget_grade(const char *text, size_t len);

/*
 * Parses exactly len bytes (no NUL needed) that must grade
 * JSONGET_STRICT and be an object.  OUT_OK with *out (caller puts it)
 * or OUT_INVALID_JSON.  Every request body and JWT goes through this.
 */
enum outcome jsonget_parse(const char *text, size_t len, struct json_object **out)
    __attribute__((warn_unused_result));

/*
 * As jsonget_parse, also accepting JSONGET_LOOSE text: a lone surrogate
 * becomes U+FFFD, and a string value holding \u0000 is refused by every
 * string getter below (it reads as absent).  For signed payloads that
 * must be recorded whatever they hold; never for client requests.
 */
enum outcome jsonget_parse_loose(const char *text, size_t len, struct json_object **out)
    __attribute__((warn_unused_result));

enum jsonget_type {
	JG_STRING,	/* bounds: length in bytes */
	JG_INT,		/* bounds: value (JSON integer, no fraction) */
	JG_BOOL,
	JG_OBJECT,	/* bounds: serialised size in bytes (0 = unbounded) */
	JG__MAX
};

struct jsonget_field {
	const char *name;
	enum jsonget_type type;
	int required;
	long long min, max;
	const char *const *choices;	/* NULL-terminated allowed strings, or NULL */
};

/*
 * Checks obj against a table of n fields.  Unknown members are ignored
 * (forward compatibility).  On failure returns OUT_INVALID_FIELD, with
 * *bad = the field's name and *why a client-safe sentence (static).
 * Strings must be valid UTF-8 without control characters.
 */
enum outcome jsonget_validate(struct json_object *obj, const struct jsonget_field *fields,
    size_t n, const char **bad, const char **why) __attribute__((warn_unused_result));

/*
 * v's text if v is a JSON string without an embedded NUL (which a C
 * string would silently cut), else NULL.  Borrowed from v.  All string
 * getters below go through it.
 */
const char *jsonget_string(struct json_object *v);

/* Member name of obj if it is a string (see jsonget_string), else NULL.  Borrowed from obj. */
const char *jsonget_str(struct json_object *obj, const char *name);

/* Member name as an integer: 0 and *out set, or -1 if missing / not an integer. */
int jsonget_int(struct json_object *obj, const char *name, long long *out);

/* Member name as a boolean: 0 and *out set, or -1. */
int jsonget_bool(struct json_object *obj, const char *name, int *out);

/* Member name if it is an object, else NULL.  Borrowed. */
struct json_object *jsonget_obj(struct json_object *obj, const char *name);

/* Member name if it is an array, else NULL.  Borrowed. */
struct json_object *jsonget_array(struct json_object *obj, const char *name);

/*
 * Walks a dotted path ("data.object.items.data.0.price.id": numeric
 * parts index arrays) and returns the value there or NULL.  Borrowed.
 */
struct json_object *jsonget_path(struct json_object *obj, const char *path);

/* jsonget_path that must end at a string / an integer. */
const char *jsonget_path_str(struct json_object *obj, const char *path);
int jsonget_path_int(struct json_object *obj, const char *path, long long *out);

/* Whether s (length n) is valid UTF-8 free of control characters. */
int jsonget_clean_utf8(const char *s, size_t n);

#endif
