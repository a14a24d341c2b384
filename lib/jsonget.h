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
 * Parses exactly len bytes as one JSON value that must be an object.
 * NUL bytes, trailing garbage, nesting deeper than LIMIT_JSON_DEPTH and
 * invalid UTF-8 are rejected.  OUT_OK with *out (caller puts it) or
 * OUT_INVALID_JSON.
 */
enum outcome jsonget_parse(const char *text, size_t len, struct json_object **out)
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

/* Member name of obj if it is a string, else NULL.  Borrowed from obj. */
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
