/*
 * libFuzzer target for what the program makes of Stripe's answers (a
 * broken or hostile Stripe, or whatever answers at STRIPE_API_BASE): the
 * body is parsed as stripe_call parses it (jsonget_parse_loose), then
 *   - read as an invoice preview (plan_change_preview_answer), with the
 *     member "renewal" as the renewal preview when it is an object, and
 *     the first byte choosing invoiced_now (bit 0), whether the renewal
 *     is passed (bit 1) and the proration behaviour (the rest, modulo);
 *   - read as a subscription (subscription_columns_of), as billing-sync
 *     check compares it, with STRIPE_PRICE_PRO_MONTHLY configured.
 * Properties checked, besides memory safety and UBSan: the preview
 * answer, as the client receives it, grades JSONGET_STRICT, and when
 * the change is invoiced at once the next invoice's amount is the sum
 * of its lines; the columns have a tier among
 * free, basic and pro.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonget.h"
#include "plan_change.h"
#include "subscription.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setenv("STRIPE_PRICE_PRO_MONTHLY", "price_pro_monthly", 1);
	unsetenv("BILLING_CONFIG");
	return 0;
}

/* Whether part's "amount" is the sum of the amounts of its "lines". */
static int
sums(struct json_object *part)
{
	struct json_object *lines = jsonget_array(part, "lines");
	long long amount, each, sum = 0;
	size_t i, n;

	if (lines == NULL || jsonget_int(part, "amount", &amount) == -1)
		return 0;
	n = json_object_array_length(lines);
	for (i = 0; i < n; i++) {
		if (jsonget_int(json_object_array_get_idx(lines, i), "amount", &each) == -1)
			return 0;
		if (__builtin_add_overflow(sum, each, &sum))
			return 0;
	}
	return sum == amount;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *root = NULL, *answer = NULL, *renewal;
	struct subscription_columns c;
	const char *text;
	char *copy;
	int flags;

	if (size == 0)
		return 0;
	flags = data[0];
	if ((copy = malloc(size - 1 ? size - 1 : 1)) == NULL)
		abort();
	memcpy(copy, data + 1, size - 1);
	if (jsonget_parse_loose(copy, size - 1, &root) != OUT_OK)
		goto out;

	renewal = flags & 2 ? jsonget_obj(root, "renewal") : NULL;
	if (plan_change_preview_answer(root, renewal, flags & 1,
				       (enum plan_proration)((flags >> 2) % PRORATION__MAX),
				       1800000000, &answer) == OUT_OK) {
		if (answer == NULL)
			abort();
		text = json_object_to_json_string_ext(answer, JSON_C_TO_STRING_PLAIN);
		if (text == NULL || jsonget_grade(text, strlen(text)) != JSONGET_STRICT)
			abort();
		/* Invoiced at once, the next invoice is the renewal's lines, summed here. */
		if ((flags & 1) && !sums(jsonget_obj(answer, "nextInvoice")))
			abort();
	} else if (answer != NULL) {
		abort();
	}

	subscription_columns_of(root, flags & 4 ? "basic" : NULL, flags & 8 ? "yearly" : NULL, &c);
	if (c.tier == NULL ||
	    (strcmp(c.tier, "free") != 0 && strcmp(c.tier, "basic") != 0 && strcmp(c.tier, "pro") != 0))
		abort();
out:
	json_object_put(answer);
	json_object_put(root);
	free(copy);
	return 0;
}
