/*
 * libFuzzer target for webhook event parsing: subscription_event_parse
 * over the raw (already verified) body, plus the JSON grading the event
 * path relies on.  Properties checked, besides memory safety:
 *   - a parsed event has an id, a type and an object data.object, and
 *     the text it was parsed from (and is stored as, jsonb_fit's output)
 *     grades JSONGET_STRICT, is no longer than the body, and is the body
 *     itself when the body was strict and nothing was left out;
 *   - jsonget_grade agrees with the parsers: STRICT text that is an
 *     object parses with jsonget_parse, LOOSE only with
 *     jsonget_parse_loose, INVALID with neither;
 *   - no string a getter returns is cut short by an embedded NUL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonget.h"
#include "subscription.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
is_object_text(const char *s, size_t n)
{
	while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) {
		s++;
		n--;
	}
	return n > 0 && *s == '{';
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct subscription_event ev;
	struct json_object *strict = NULL, *loose = NULL;
	const char *raw;
	char *copy = malloc(size ? size : 1); /* exactly sized, no NUL after it */
	enum jsonget_grade g;
	enum outcome ps, pl;

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	raw = copy;

	g = jsonget_grade(raw, size);
	ps = jsonget_parse(raw, size, &strict);
	pl = jsonget_parse_loose(raw, size, &loose);
	if ((ps == OUT_OK) != (g == JSONGET_STRICT && is_object_text(raw, size)))
		abort();
	if ((pl == OUT_OK) != (g != JSONGET_INVALID && is_object_text(raw, size)))
		abort();
	if (pl == OUT_OK) {
		const char *id = jsonget_str(loose, "id");

		if (id != NULL && strlen(id) != (size_t)json_object_get_string_len(
		    json_object_object_get(loose, "id")))
			abort();
	}
	json_object_put(strict);
	json_object_put(loose);

	if (subscription_event_parse(raw, size, &ev) == OUT_OK) {
		if (ev.id == NULL || ev.type == NULL || ev.object == NULL ||
		    !json_object_is_type(ev.object, json_type_object) || *ev.id == '\0' ||
		    ev.raw != ev.fit.text || ev.raw_len != ev.fit.len || ev.raw_len > size ||
		    jsonget_grade(ev.raw, ev.raw_len) != JSONGET_STRICT)
			abort();
		if (g == JSONGET_STRICT && ev.fit.left_out == 0 &&
		    (ev.raw_len != size || memcmp(ev.raw, raw, size) != 0))
			abort();
	}
	subscription_event_free(&ev);
	free(copy);
	return 0;
}
