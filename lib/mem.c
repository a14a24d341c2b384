#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "mem.h"
#include "response.h"

static void *
checked(void *p)
{
	if (p == NULL)
		response_fatal("out of memory");
	return p;
}

void *
mem_alloc(size_t size)
{
	return checked(malloc(size ? size : 1));
}

void *
mem_calloc(size_t n, size_t size)
{
	return checked(calloc(n ? n : 1, size ? size : 1));
}

void *
mem_realloc(void *p, size_t size)
{
	return checked(realloc(p, size ? size : 1));
}

char *
mem_strdup(const char *s)
{
	return checked(strdup(s));
}

char *
mem_strndup(const char *s, size_t n)
{
	return checked(strndup(s, n));
}

void
mem_free_secret(void *p, size_t len)
{
	if (p == NULL)
		return;
	OPENSSL_cleanse(p, len);
	free(p);
}
