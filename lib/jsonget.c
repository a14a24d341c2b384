#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonget.h"
#include "limits.h"

/*
 * Decodes one UTF-8 sequence of at most end - p bytes into a Unicode
 * scalar value (RFC 3629: no overlong forms, no surrogates, nothing
 * beyond U+10FFFF).  Returns its length, or 0 when it is not one.
 */
static size_t
utf8_decode(const unsigned char *p, const unsigned char *end, unsigned *out)
{
	unsigned cp;
	size_t extra, i;

	if (p >= end)
		return 0;
	if (*p < 0x80) {
		*out = *p;
		return 1;
	}
	if ((*p & 0xe0) == 0xc0) {
		cp = *p & 0x1f;
		extra = 1;
	} else if ((*p & 0xf0) == 0xe0) {
		cp = *p & 0x0f;
		extra = 2;
	} else if ((*p & 0xf8) == 0xf0) {
		cp = *p & 0x07;
		extra = 3;
	} else
		return 0;
	if ((size_t)(end - p) <= extra)
		return 0;
	for (i = 1; i <= extra; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
	    (extra == 3 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*out = cp;
	return extra + 1;
}

int
jsonget_clean_utf8(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + n;
	unsigned cp;
	size_t len;

	while (p < e) {
		if ((len = utf8_decode(p, e, &cp)) == 0)
			return 0;
		/* C0 controls, DEL and C1 controls. */
		if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0))
			return 0;
		p += len;
	}
	return 1;
}

/*
 * The RFC 8259 grammar, checked over the raw bytes before json-c builds
 * the tree: json-c, even in strict mode, takes NaN, Infinity, "1.",
 * raw control characters in strings and 'single quotes', turns a lone
 * surrogate escape into U+FFFD (two inputs, one user id) and cuts
 * member names at \u0000.  The scanner advances a pointer that never
 * passes end and nests at most LIMIT_JSON_DEPTH containers deep.
 */
struct scan {
	const unsigned char *p, *end;
	int depth;
	int loose;	/* a string holds a lone surrogate or \u0000 */
};

static int scan_value(struct scan *s);

static void
scan_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/* Whether the next byte is c; consumes it if so. */
static int
scan_take(struct scan *s, unsigned char c)
{
	if (s->p < s->end && *s->p == c) {
		s->p++;
		return 1;
	}
	return 0;
}

static int
scan_digits(struct scan *s)
{
	const unsigned char *start = s->p;

	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > start ? 0 : -1;
}

/* number = [ minus ] int [ frac ] [ exp ]; int = zero / ( digit1-9 *DIGIT ) */
static int
scan_number(struct scan *s)
{
	(void)scan_take(s, '-');
	if (scan_take(s, '0'))
		;
	else if (s->p < s->end && *s->p >= '1' && *s->p <= '9')
		(void)scan_digits(s);
	else
		return -1;
	if (scan_take(s, '.') && scan_digits(s) == -1)
		return -1;
	if (scan_take(s, 'e') || scan_take(s, 'E')) {
		if (!scan_take(s, '+'))
			(void)scan_take(s, '-');
		if (scan_digits(s) == -1)
			return -1;
	}
	return 0;
}

/* Four hex digits at p (within end) into *u. */
static int
scan_hex4(const unsigned char *p, const unsigned char *end, unsigned *u)
{
	int i;

	if (end - p < 4)
		return -1;
	*u = 0;
	for (i = 0; i < 4; i++) {
		*u <<= 4;
		if (p[i] >= '0' && p[i] <= '9')
			*u |= (unsigned)(p[i] - '0');
		else if ((p[i] | 0x20) >= 'a' && (p[i] | 0x20) <= 'f')
			*u |= (unsigned)((p[i] | 0x20) - 'a' + 10);
		else
			return -1;
	}
	return 0;
}

/*
 * One escape at s->p (a backslash).  \uXXXX must be a Unicode scalar
 * value: a high surrogate only as the first half of a pair.  A lone
 * surrogate or \u0000 is grammatical JSON, so it only makes the text
 * loose; \u0000 in a member name is refused outright, as json-c would
 * cut the name there.
 */
static int
scan_escape(struct scan *s, int in_name)
{
	unsigned u, low;

	if (s->end - s->p < 2)
		return -1;
	if (s->p[1] != '\0' && strchr("\"\\/bfnrt", s->p[1]) != NULL) {
		s->p += 2;
		return 0;
	}
	if (s->p[1] != 'u' || scan_hex4(s->p + 2, s->end, &u) == -1)
		return -1;
	s->p += 6;
	if (u >= 0xd800 && u <= 0xdbff && s->end - s->p >= 6 && s->p[0] == '\\' &&
	    s->p[1] == 'u' && scan_hex4(s->p + 2, s->end, &low) == 0 && low >= 0xdc00 &&
	    low <= 0xdfff) {
		s->p += 6;
		return 0;
	}
	if (u == 0 && in_name)
		return -1;
	if (u == 0 || (u >= 0xd800 && u <= 0xdfff))
		s->loose = 1;
	return 0;
}

/* string = quotation-mark *char quotation-mark, as valid UTF-8 (RFC 8259 8.1). */
static int
scan_string(struct scan *s, int in_name)
{
	unsigned cp;
	size_t n;

	if (!scan_take(s, '"'))
		return -1;
	while (s->p < s->end) {
		/* Plain printable ASCII, most of any text, in a tight loop. */
		while (s->p < s->end && *s->p >= 0x20 && *s->p < 0x80 && *s->p != '"' &&
		    *s->p != '\\')
			s->p++;
		if (s->p == s->end)
			break;
		if (*s->p == '"') {
			s->p++;
			return 0;
		}
		if (*s->p < 0x20)
			return -1;
		if (*s->p == '\\') {
			if (scan_escape(s, in_name) == -1)
				return -1;
			continue;
		}
		if ((n = utf8_decode(s->p, s->end, &cp)) == 0)
			return -1;
		s->p += n;
	}
	return -1;
}

static int
scan_literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return -1;
	s->p += n;
	return 0;
}

/* object or array: the opening byte, then members or values, then the closing one. */
static int
scan_container(struct scan *s, unsigned char close)
{
	s->p++;
	if (++s->depth > LIMIT_JSON_DEPTH)
		return -1;
	scan_ws(s);
	if (scan_take(s, close)) {
		s->depth--;
		return 0;
	}
	for (;;) {
		scan_ws(s);
		if (close == '}') {
			if (scan_string(s, 1) == -1)
				return -1;
			scan_ws(s);
			if (!scan_take(s, ':'))
				return -1;
			scan_ws(s);
		}
		if (scan_value(s) == -1)
			return -1;
		scan_ws(s);
		if (scan_take(s, close)) {
			s->depth--;
			return 0;
		}
		if (!scan_take(s, ','))
			return -1;
	}
}

static int
scan_value(struct scan *s)
{
	if (s->p >= s->end)
		return -1;
	switch (*s->p) {
	case '{':
		return scan_container(s, '}');
	case '[':
		return scan_container(s, ']');
	case '"':
		return scan_string(s, 0);
	case 't':
		return scan_literal(s, "true");
	case 'f':
		return scan_literal(s, "false");
	case 'n':
		return scan_literal(s, "null");
	default:
		return scan_number(s);
	}
}

enum jsonget_grade
jsonget_grade(const char *text, size_t len)
{
	struct scan s = {(const unsigned char *)text, (const unsigned char *)text + len, 0, 0};

	/* json-c takes an int length. */
	if (text == NULL || len > (size_t)INT32_MAX)
		return JSONGET_INVALID;
	scan_ws(&s);
	if (scan_value(&s) == -1)
		return JSONGET_INVALID;
	scan_ws(&s);
	if (s.p != s.end)
		return JSONGET_INVALID;
	return s.loose ? JSONGET_LOOSE : JSONGET_STRICT;
}

/* json-c clamps integers beyond int64 to the limits; our ranges never reach them. */
static int
int64_clamped(int64_t v)
{
	return v == INT64_MAX || v == INT64_MIN;
}

static enum outcome
parse_graded(const char *text, size_t len, enum jsonget_grade worst, struct json_object **out)
{
	struct json_tokener *tok = NULL;
	struct json_object *obj = NULL;
	enum outcome rc = OUT_INVALID_JSON;

	*out = NULL;
	if (jsonget_grade(text, len) > worst)
		goto out;
	/* json-c counts a scalar inside the deepest container as one more level. */
	if ((tok = json_tokener_new_ex(LIMIT_JSON_DEPTH + 1)) == NULL)
		goto out;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	obj = json_tokener_parse_ex(tok, text, (int)len);
	if (obj == NULL || json_tokener_get_error(tok) != json_tokener_success ||
	    !json_object_is_type(obj, json_type_object))
		goto out;
	*out = obj;
	obj = NULL;
	rc = OUT_OK;
out:
	json_object_put(obj);
	if (tok)
		json_tokener_free(tok);
	return rc;
}

enum outcome
jsonget_parse(const char *text, size_t len, struct json_object **out)
{
	return parse_graded(text, len, JSONGET_STRICT, out);
}

enum outcome
jsonget_parse_loose(const char *text, size_t len, struct json_object **out)
{
	return parse_graded(text, len, JSONGET_LOOSE, out);
}

const char *
jsonget_string(struct json_object *v)
{
	const char *s;

	if (v == NULL || !json_object_is_type(v, json_type_string))
		return NULL;
	s = json_object_get_string(v);
	/* A \u0000 inside would cut the C string short: a different value. */
	if (strlen(s) != (size_t)json_object_get_string_len(v))
		return NULL;
	return s;
}

static int
is_integer(struct json_object *v)
{
	return v != NULL && json_object_is_type(v, json_type_int);
}

const char *
jsonget_str(struct json_object *obj, const char *name)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v))
		return NULL;
	return jsonget_string(v);
}

int
jsonget_int(struct json_object *obj, const char *name, long long *out)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v) || !is_integer(v))
		return -1;
	*out = (long long)json_object_get_int64(v);
	return int64_clamped(*out) ? -1 : 0;
}

int
jsonget_bool(struct json_object *obj, const char *name, int *out)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v) ||
	    !json_object_is_type(v, json_type_boolean))
		return -1;
	*out = json_object_get_boolean(v);
	return 0;
}

struct json_object *
jsonget_obj(struct json_object *obj, const char *name)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v) ||
	    !json_object_is_type(v, json_type_object))
		return NULL;
	return v;
}

struct json_object *
jsonget_array(struct json_object *obj, const char *name)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v) ||
	    !json_object_is_type(v, json_type_array))
		return NULL;
	return v;
}

struct json_object *
jsonget_path(struct json_object *obj, const char *path)
{
	char part[128];
	const char *p = path, *dot;
	size_t n;
	char *end;
	unsigned long idx;

	while (obj != NULL && *p != '\0') {
		dot = strchr(p, '.');
		n = dot ? (size_t)(dot - p) : strlen(p);
		if (n == 0 || n >= sizeof(part))
			return NULL;
		memcpy(part, p, n);
		part[n] = '\0';
		if (json_object_is_type(obj, json_type_array)) {
			idx = strtoul(part, &end, 10);
			if (*end != '\0' || idx >= json_object_array_length(obj))
				return NULL;
			obj = json_object_array_get_idx(obj, idx);
		} else if (json_object_is_type(obj, json_type_object)) {
			if (!json_object_object_get_ex(obj, part, &obj))
				return NULL;
		} else
			return NULL;
		p = dot ? dot + 1 : p + n;
	}
	return obj;
}

const char *
jsonget_path_str(struct json_object *obj, const char *path)
{
	return jsonget_string(jsonget_path(obj, path));
}

int
jsonget_path_int(struct json_object *obj, const char *path, long long *out)
{
	struct json_object *v = jsonget_path(obj, path);

	if (!is_integer(v))
		return -1;
	*out = (long long)json_object_get_int64(v);
	return int64_clamped(*out) ? -1 : 0;
}

static const char *
check_string(struct json_object *v, const struct jsonget_field *f)
{
	const char *s;
	size_t n;
	const char *const *c;

	if (!json_object_is_type(v, json_type_string))
		return "must be a string";
	s = json_object_get_string(v);
	n = (size_t)json_object_get_string_len(v);
	if (strlen(s) != n || !jsonget_clean_utf8(s, n))
		return "must be text without control characters";
	if ((long long)n < f->min)
		return f->min == 1 ? "must not be empty" : "is too short";
	if (f->max > 0 && (long long)n > f->max)
		return "is too long";
	if (f->choices) {
		for (c = f->choices; *c; c++)
			if (strcmp(*c, s) == 0)
				return NULL;
		return "is not one of the allowed values";
	}
	return NULL;
}

static const char *
check_field(struct json_object *v, const struct jsonget_field *f)
{
	long long n;

	switch (f->type) {
	case JG_STRING:
		return check_string(v, f);
	case JG_INT:
		if (!is_integer(v))
			return "must be a whole number";
		n = (long long)json_object_get_int64(v);
		if (int64_clamped(n) || n < f->min || n > f->max)
			return "is out of range";
		return NULL;
	case JG_BOOL:
		return json_object_is_type(v, json_type_boolean) ? NULL : "must be true or false";
	case JG_OBJECT:
		if (!json_object_is_type(v, json_type_object))
			return "must be an object";
		if (f->max > 0 && strlen(json_object_to_json_string_ext(v,
		    JSON_C_TO_STRING_PLAIN)) > (size_t)f->max)
			return "is too large";
		return NULL;
	default:
		return "has an unknown type";
	}
}

enum outcome
jsonget_validate(struct json_object *obj, const struct jsonget_field *fields, size_t n,
    const char **bad, const char **why)
{
	struct json_object *v;
	const char *problem;
	size_t i;

	for (i = 0; i < n; i++) {
		if (!json_object_object_get_ex(obj, fields[i].name, &v) ||
		    json_object_is_type(v, json_type_null)) {
			if (!fields[i].required)
				continue;
			*bad = fields[i].name;
			*why = "is required";
			return OUT_INVALID_FIELD;
		}
		if ((problem = check_field(v, &fields[i])) != NULL) {
			*bad = fields[i].name;
			*why = problem;
			return OUT_INVALID_FIELD;
		}
	}
	return OUT_OK;
}
