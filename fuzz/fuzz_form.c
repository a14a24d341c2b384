/*
 * libFuzzer target for application/x-www-form-urlencoded both ways, and
 * for the HTML escaping of what comes out: the decoder behind
 * request_form_param (the operator console's POST forms) and
 * request_query_param, the encoders form_add (Stripe's bodies) and
 * html_url_arg (links in the console), html_txt.
 * The input is split at the first NUL into a key and a value (no NUL:
 * the key is "k").  Properties checked, besides memory safety:
 *   - the whole input, as a form body (exactly sized), decodes without
 *     reading past its end; a value found holds no control byte;
 *   - what form_add encodes, request_form_param decodes back to the same
 *     value under the same key, and html_url_arg's encoding of the value
 *     decodes back to it as a query string, whenever neither key nor
 *     value holds a byte the decoder refuses (controls);
 *   - html_txt of the value holds no '<', '>', '"' or '\'' and every '&'
 *     begins one of the entities html_escape writes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "html.h"
#include "limits.h"
#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char content_type[] = "CONTENT_TYPE=application/x-www-form-urlencoded";

int LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	putenv(content_type);
	return 0;
}

static int
has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

static int
entity_at(const char *s)
{
	static const char *const entities[] = { "&amp;", "&lt;", "&gt;", "&quot;", "&#39;" };
	size_t i;

	for (i = 0; i < sizeof(entities) / sizeof(entities[0]); i++)
		if (strncmp(s, entities[i], strlen(entities[i])) == 0)
			return 1;
	return 0;
}

/* The decoded value of name in body (len bytes, exactly sized), or NULL. */
static char *
decode(const char *body, size_t len, const char *name)
{
	struct request r;
	char *copy = malloc(len ? len : 1), *v = NULL;

	if (copy == NULL)
		abort();
	memcpy(copy, body, len);
	memset(&r, 0, sizeof(r));
	r.method = "POST";
	r.query = "";
	r.body = copy;
	r.body_len = len;
	r.body_outcome = OUT_OK;
	if (request_form_param(&r, name, &v) == 1 && (v == NULL || has_control(v)))
		abort();
	free(copy);
	return v;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	char *key, *value, *v;
	struct form f;
	struct html h = HTML_INIT;
	struct request q;
	const char *p;

	free(decode((const char *)data, size, "k"));
	free(decode((const char *)data, size, "user"));

	if (nul != NULL) {
		key = strndup((const char *)data, (size_t)(nul - data));
		value = strndup((const char *)nul + 1, size - (size_t)(nul - data) - 1);
	} else {
		key = strdup("k");
		value = strndup((const char *)data, size);
	}
	if (key == NULL || value == NULL)
		abort();

	if (*key != '\0' && !has_control(key) && !has_control(value)) {
		/* A pair before it whose value looks like "&k=": encoded, it stays one pair. */
		form_init(&f);
		if ((strcmp(key, "other") != 0 && form_add(&f, "other", "x&k=y+z%") != 0) ||
		    form_add(&f, key, value) != 0)
			abort();
		if (form_len(&f) <= LIMIT_FORM_BODY_IN) {
			v = decode(form_str(&f), form_len(&f), key);
			if (v == NULL || strcmp(v, value) != 0)
				abort();
			free(v);
		}
		form_free(&f);

		/* A link's query argument, read back as the console reads its query. */
		html_raw(&h, "v=");
		html_url_arg(&h, value);
		if (html_failed(&h))
			abort();
		memset(&q, 0, sizeof(q));
		q.method = "GET";
		q.query = buf_str(&h.b);
		if (h.b.len <= LIMIT_QUERY_STRING) {
			if (request_query_param(&q, "v", &v) != 1 || strcmp(v, value) != 0)
				abort();
			free(v);
		}
		html_free(&h);
	}

	h = (struct html)HTML_INIT;
	html_txt(&h, value);
	if (!html_failed(&h))
		for (p = buf_str(&h.b); *p != '\0'; p++)
			if (*p == '<' || *p == '>' || *p == '"' || *p == '\'' ||
			    (*p == '&' && !entity_at(p)))
				abort();
	html_free(&h);
	free(key);
	free(value);
	return 0;
}
