/*
 * libFuzzer target: query-string parsing (request_query_param) and the
 * CONTENT_LENGTH parser (through request_read_body with an empty
 * stdin), the two places where request meta-variables are parsed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct request r;
	char *s, *v = NULL;
	int devnull;

	s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';

	setenv("QUERY_STRING", s, 1);
	request_init(&r);
	if (request_query_param(&r, "userId", &v) == 1)
		free(v);

	/* Length parsing must never read past what it accepted, nor block. */
	setenv("CONTENT_LENGTH", s, 1);
	devnull = open("/dev/null", O_RDONLY);
	dup2(devnull, STDIN_FILENO);
	close(devnull);
	request_init(&r);
	if (request_read_body(&r, 64) == OUT_OK)
		request_free(&r);
	free(s);
	return 0;
}
