/*
 * hex: every byte value against printf's %02x, the NUL after the digits,
 * and nothing written past them.
 */
#include <stdio.h>
#include <string.h>

#include "hex.h"
#include "tap.h"

int
main(void)
{
	unsigned char all[256], two[2] = { 0x0f, 0xa0 };
	char got[2 * sizeof(all) + 1], want[2 * sizeof(all) + 1], small[8];
	size_t i;

	for (i = 0; i < sizeof(all); i++) {
		all[i] = (unsigned char)i;
		snprintf(want + 2 * i, 3, "%02x", (unsigned)i);
	}
	hex_encode(got, all, sizeof(all));
	is_str(got, want, "every byte value as two lowercase digits, as %%02x");

	memset(small, '#', sizeof(small));
	hex_encode(small, two, sizeof(two));
	ok(memcmp(small, "0fa0\0##", 7) == 0 && small[7] == '#',
	    "2 bytes: 4 digits and a NUL, nothing written past them");

	memset(small, '#', sizeof(small));
	hex_encode(small, two, 0);
	ok(small[0] == '\0' && small[1] == '#', "no bytes: just the NUL");
	return done_testing();
}
