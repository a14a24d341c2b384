#include <stdio.h>
#include <string.h>

#include "form.h"
#include "limits.h"

void
form_init(struct form *f)
{
	buf_init(&f->b, LIMIT_FORM_BODY);
}

/* Undoes a partly appended pair so a failed form_add changes nothing. */
static int
rollback(struct form *f, size_t len)
{
	f->b.len = len;
	if (f->b.data)
		f->b.data[len] = '\0';
	return -1;
}

/*
 * Keys are percent-encoded except for the brackets of Stripe's nested
 * parameter notation, which stay literal as stripe-node sends them
 * ("the server accepts both encoded and unencoded brackets").
 */
static int
add_key(struct buf *b, const char *key)
{
	char one[2] = {0, 0};

	for (; *key != '\0'; key++) {
		one[0] = *key;
		if (*key == '[' || *key == ']' ? buf_addch(b, *key) == -1
					       : buf_add_urlencoded(b, one) == -1)
			return -1;
	}
	return 0;
}

int
form_add(struct form *f, const char *key, const char *value)
{
	size_t start = f->b.len;

	if (key == NULL || *key == '\0' || value == NULL)
		return -1;
	if ((start > 0 && buf_addch(&f->b, '&') == -1) || add_key(&f->b, key) == -1 ||
	    buf_addch(&f->b, '=') == -1 || buf_add_urlencoded(&f->b, value) == -1)
		return rollback(f, start);
	return 0;
}

int
form_add_long(struct form *f, const char *key, long long n)
{
	char num[32];

	snprintf(num, sizeof(num), "%lld", n);
	return form_add(f, key, num);
}

int
form_add_encoded(struct form *f, const char *encoded)
{
	size_t start = f->b.len;

	if ((start > 0 && buf_addch(&f->b, '&') == -1) || buf_addstr(&f->b, encoded) == -1)
		return rollback(f, start);
	return 0;
}

const char *
form_str(const struct form *f)
{
	return buf_str(&f->b);
}

size_t
form_len(const struct form *f)
{
	return f->b.len;
}

void
form_free(struct form *f)
{
	if (f)
		buf_free(&f->b);
}
