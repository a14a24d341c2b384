#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonget.h"
#include "limits.h"

int
jsonget_clean_utf8(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + n;
	unsigned cp;
	int extra;

	while (p < e) {
		if (*p < 0x80) {
			if (*p < 0x20 || *p == 0x7f)
				return 0;
			p++;
			continue;
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
		if (e - p <= extra)
			return 0;
		for (int i = 1; i <= extra; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		/* Overlong forms, surrogates, beyond U+10FFFF, C1 controls. */
		if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
		    (extra == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return 0;
		p += extra + 1;
	}
	return 1;
}

/* Raw UTF-8 check over the input text, allowing the whitespace JSON allows. */
static int
valid_utf8_text(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, start;

	while (i < n) {
		if (p[i] < 0x80) {
			if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
				return 0;
			i++;
			continue;
		}
		start = i;
		while (i < n && p[i] >= 0x80)
			i++;
		if (!jsonget_clean_utf8(s + start, i - start))
			return 0;
	}
	return 1;
}

/*
 * json-c accepts 'single-quoted' strings even in strict mode; RFC 8259
 * does not.  Outside a double-quoted string a quote character can only
 * be that extension, so refuse it before parsing.
 */
static int
no_single_quotes(const char *s, size_t n)
{
	int in_string = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (in_string) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				in_string = 0;
		} else if (s[i] == '"')
			in_string = 1;
		else if (s[i] == '\'')
			return 0;
	}
	return 1;
}

/* json-c clamps integers beyond int64 to the limits; our ranges never reach them. */
static int
int64_clamped(int64_t v)
{
	return v == INT64_MAX || v == INT64_MIN;
}

enum outcome
jsonget_parse(const char *text, size_t len, struct json_object **out)
{
	struct json_tokener *tok = NULL;
	struct json_object *obj = NULL;
	enum outcome rc = OUT_INVALID_JSON;

	*out = NULL;
	if (len == 0 || len > (size_t)INT32_MAX || memchr(text, '\0', len) != NULL ||
	    !valid_utf8_text(text, len) || !no_single_quotes(text, len))
		goto out;
	if ((tok = json_tokener_new_ex(LIMIT_JSON_DEPTH)) == NULL)
		goto out;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	obj = json_tokener_parse_ex(tok, text, (int)len);
	if (obj == NULL || json_tokener_get_error(tok) != json_tokener_success)
		goto out;
	/* Anything after the value other than whitespace is garbage. */
	for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
		if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r')
			goto out;
	if (!json_object_is_type(obj, json_type_object))
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

static int
is_integer(struct json_object *v)
{
	return v != NULL && json_object_is_type(v, json_type_int);
}

const char *
jsonget_str(struct json_object *obj, const char *name)
{
	struct json_object *v;

	if (obj == NULL || !json_object_object_get_ex(obj, name, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
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
	struct json_object *v = jsonget_path(obj, path);

	if (v == NULL || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
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
