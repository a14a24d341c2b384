/*
 * libFuzzer target: strict JSON parsing and declarative validation of
 * request bodies (jsonget_parse + jsonget_validate + path getters).
 */
#include <stdint.h>
#include <stddef.h>

#include "jsonget.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const tiers[] = { "basic", "pro", NULL };

static const struct jsonget_field fields[] = {
	{ "userId", JG_STRING, 1, 1, 128, NULL },
	{ "tier", JG_STRING, 0, 1, 16, tiers },
	{ "amount", JG_INT, 0, 1, 1000000, NULL },
	{ "flag", JG_BOOL, 0, 0, 0, NULL },
	{ "metadata", JG_OBJECT, 0, 0, 4096, NULL },
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *obj = NULL;
	const char *bad, *why;
	long long n;

	if (jsonget_parse((const char *)data, size, &obj) != OUT_OK)
		return 0;
	(void)jsonget_validate(obj, fields, sizeof(fields) / sizeof(fields[0]), &bad, &why);
	(void)jsonget_path_str(obj, "data.object.items.data.0.price.id");
	(void)jsonget_path_int(obj, "data.object.created", &n);
	json_object_put(obj);
	return 0;
}
