/*
 * libFuzzer target for the mail templates (template_parse and
 * template_render): the input is a template's text, exactly sized (the
 * parser takes a length, not a string, so ASan sees any read past it).
 * Properties checked, besides memory safety:
 *   - a template that parses renders with every value it may use;
 *   - rendered with empty values, no "{{" is left (every "{{" was a
 *     placeholder or the template was refused);
 *   - rendered as HTML with values full of markup, the output holds no
 *     more '<', '>', '"' or '\'' than the template's own text does, and
 *     rendered as text no control character but the template's own.
 */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "limits.h"
#include "template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Index 2 may not be used here, as a kind's table leaves out what it has no value for. */
static const char *const names[] = { "app_name", "plan", NULL, "amount" };
#define N (sizeof(names) / sizeof(names[0]))
static const char *const empty[N] = { "", "", NULL, "" };
static const char *const markup[N] = { "<b>\"A&B\"</b>", "'x'>", NULL, "a\r\nBcc: x@y\x7f" };

static size_t
count(const struct buf *b, const char *set)
{
	size_t i, n = 0;

	for (i = 0; i < b->len; i++)
		n += b->data[i] != '\0' && strchr(set, b->data[i]) != NULL;
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf plain = BUF_INIT(LIMIT_MAIL_MESSAGE), html = BUF_INIT(LIMIT_MAIL_MESSAGE),
		   text = BUF_INIT(LIMIT_MAIL_MESSAGE);
	struct template *t = NULL;
	const char *missing;
	char err[256], *copy = malloc(size ? size : 1);

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	if (template_parse(copy, size, names, N, &t, err, sizeof(err)) == 0) {
		if (template_render(t, empty, TEMPLATE_TEXT, &plain, &missing) != 0 ||
		    template_render(t, markup, TEMPLATE_HTML, &html, &missing) != 0 ||
		    template_render(t, markup, TEMPLATE_TEXT, &text, &missing) != 0)
			abort();
		if (plain.len > 0 && memmem(plain.data, plain.len, "{{", 2) != NULL)
			abort();
		if (count(&html, "<>\"'") != count(&plain, "<>\"'"))
			abort();
		if (count(&text, "\r\n\x7f") != count(&plain, "\r\n\x7f"))
			abort();
	} else if (t != NULL) {
		abort();
	}
	template_free(t);
	buf_free(&plain);
	buf_free(&html);
	buf_free(&text);
	free(copy);
	return 0;
}
