#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "config.h"
#include "form.h"
#include "portal.h"
#include "tap.h"

static enum outcome
parse(const char *text, struct portal_request *req, const char **field, struct json_object **keep)
{
	const char *why = NULL;

	json_object_put(*keep);
	*keep = json_tokener_parse(text);
	*field = NULL;
	return portal_parse(*keep, req, field, &why);
}

int
main(void)
{
	struct json_object *body = NULL;
	struct portal_request req;
	const char *field;
	struct form f;

	unsetenv("BILLING_CONFIG");
	setenv("ALLOWED_REDIRECT_HOSTS", "app.example.test", 1);
	ok(config_load() == OUT_OK, "config loads");

	ok(parse("{\"userId\":\"u1\",\"returnUrl\":\"https://app.example.test/b\"}", &req, &field,
		 &body) == OUT_OK &&
	       req.flow == PORTAL_FLOW_NONE &&
	       strcmp(req.return_url, "https://app.example.test/b") == 0,
	   "no flow");
	ok(parse("{\"userId\":\"u1\",\"returnUrl\":\"https://app.example.test/b\","
		 "\"flow\":\"subscription_cancel\"}",
		 &req, &field, &body) == OUT_OK &&
	       req.flow == PORTAL_FLOW_SUBSCRIPTION_CANCEL,
	   "subscription_cancel flow");
	ok(parse("{\"userId\":\"u1\",\"returnUrl\":\"https://app.example.test/b\","
		 "\"flow\":\"subscription_update_confirm\"}",
		 &req, &field, &body) == OUT_INVALID_FIELD &&
	       strcmp(field, "flow") == 0,
	   "a flow we do not offer");
	ok(parse("{\"userId\":\"u1\",\"returnUrl\":\"https://evil.example/b\"}", &req, &field,
		 &body) == OUT_INVALID_FIELD &&
	       strcmp(field, "returnUrl") == 0,
	   "returnUrl follows ALLOWED_REDIRECT_HOSTS");
	ok(parse("{\"returnUrl\":\"https://app.example.test/b\"}", &req, &field, &body) ==
		   OUT_INVALID_FIELD &&
	       strcmp(field, "userId") == 0,
	   "userId required");

	parse("{\"userId\":\"u1\",\"returnUrl\":\"https://app.example.test/b\"}", &req, &field,
	      &body);
	form_init(&f);
	ok(portal_session_params(&f, &req, "cus_1", NULL, NULL) == 0, "params");
	is_str(form_str(&f), "customer=cus_1&return_url=https%3A%2F%2Fapp.example.test%2Fb",
	       "no flow: customer and return_url only");
	form_free(&f);
	req.flow = PORTAL_FLOW_SUBSCRIPTION_UPDATE;
	form_init(&f);
	ok(portal_session_params(&f, &req, "cus_1", "sub_1", "bpc_1") == 0, "flow params");
	is_str(form_str(&f),
	       "customer=cus_1&return_url=https%3A%2F%2Fapp.example.test%2Fb"
	       "&configuration=bpc_1&flow_data[type]=subscription_update"
	       "&flow_data[after_completion][type]=redirect"
	       "&flow_data[after_completion][redirect][return_url]="
	       "https%3A%2F%2Fapp.example.test%2Fb"
	       "&flow_data[subscription_update][subscription]=sub_1",
	       "subscription_update: configuration, flow, subscription, redirect back");
	form_free(&f);
	is_str(portal_flow_name(PORTAL_FLOW_PAYMENT_METHOD_UPDATE), "payment_method_update",
	       "flow name");
	ok(portal_flow_name(PORTAL_FLOW_NONE) == NULL, "no flow, no name");
	json_object_put(body);
	return done_testing();
}
