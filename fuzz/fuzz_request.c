/*
 * libFuzzer target: query-string parsing (request_query_param) and the
 * CONTENT_LENGTH parser (through request_take_body with an empty body),
 * the two places where request meta-variables are parsed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A body that has already ended. */
static ssize_t
no_body(void *ctx, char *p, size_t n)
{
	(void)ctx;
	(void)p;
	(void)n;
	return 0;
}

/*
 * glibc's setenv() never frees the strings it replaces, so a fuzzer
 * calling it millions of times runs out of memory.  putenv() with the
 * same two buffers every time leaks nothing.
 */
#define MAX_VALUE 8192
static char query_var[sizeof("QUERY_STRING=") + MAX_VALUE] = "QUERY_STRING=";
static char length_var[sizeof("CONTENT_LENGTH=") + MAX_VALUE] = "CONTENT_LENGTH=";

static void
set_var(char *var, size_t prefix, const uint8_t *data, size_t size)
{
	if (size > MAX_VALUE)
		size = MAX_VALUE;
	memcpy(var + prefix, data, size);
	var[prefix + size] = '\0';
	putenv(var);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct request r;
	char *v = NULL;

	set_var(query_var, sizeof("QUERY_STRING=") - 1, data, size);
	request_init(&r);
	if (request_query_param(&r, "userId", &v) == 1)
		free(v);

	/* Length parsing must never read past what it accepted, nor block. */
	set_var(length_var, sizeof("CONTENT_LENGTH=") - 1, data, size);
	request_init(&r);
	request_take_body(&r, 64, no_body, NULL);
	request_free(&r);
	return 0;
}
