#include "hex.h"

void
hex_encode(char *out, const unsigned char *raw, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		*out++ = digits[raw[i] >> 4];
		*out++ = digits[raw[i] & 15];
	}
	*out = '\0';
}
