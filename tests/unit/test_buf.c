#include <stdlib.h>

#include "buf.h"
#include "tap.h"

int
main(void)
{
	struct buf b = BUF_INIT(10);
	char *p;
	size_t len;

	is_str(buf_str(&b), "", "empty buffer reads as empty string");
	ok(buf_addstr(&b, "hello") == 0, "append within ceiling");
	ok(buf_printf(&b, "%d", 1234) == 0, "printf within ceiling");
	is_str(buf_str(&b), "hello1234", "contents");
	ok(buf_addstr(&b, "xy") == -1, "append past ceiling fails");
	is_str(buf_str(&b), "hello1234", "failed append leaves buffer unchanged");
	ok(buf_addch(&b, '!') == 0, "append up to exactly the ceiling");
	is_int(b.len, 10, "length at ceiling");
	ok(buf_printf(&b, "%s", "") == 0, "empty printf at ceiling");
	ok(buf_addch(&b, 'x') == -1, "one byte past ceiling fails");
	buf_reset(&b);
	is_int(b.len, 0, "reset empties");
	ok(buf_add(&b, "a\0b", 3) == 0 && b.len == 3, "holds NUL bytes");
	p = buf_detach(&b, &len);
	ok(len == 3 && p[0] == 'a' && p[1] == '\0' && p[2] == 'b' && p[3] == '\0',
	    "detach hands over the bytes, NUL-terminated");
	free(p);
	is_str(buf_str(&b), "", "detached buffer is empty");

	buf_init(&b, 100);
	ok(buf_add_urlencoded(&b, "a b&c=d/é~_.-") == 0, "urlencode");
	is_str(buf_str(&b), "a%20b%26c%3Dd%2F%C3%A9~_.-", "unreserved kept, rest percent-encoded");
	buf_free(&b);
	buf_free(NULL);

	buf_init(&b, 1 << 20);
	for (int i = 0; i < 200000; i++)
		if (buf_addstr(&b, "0123456789") == -1)
			break;
	is_int(b.len, (1 << 20) - 6, "growth stops before the ceiling is crossed");
	ok(buf_addstr(&b, "012345") == 0 && b.len == 1 << 20, "and fills exactly to it");
	buf_free_secret(&b);
	ok(b.data == NULL, "free_secret releases");
	return done_testing();
}
