#!/usr/bin/env bash
# tests/test_limits.sh: every size, time and count limit is a named constant
# in lib/limits.h (STYLE: "All limits are named constants in one header").
# Prints TAP: one line per source file, failing on a numeric #define (or a
# numeric bound in config_get_long) outside limits.h.  Exits 1 on a failure.

set -u

here=$(cd "$(dirname "$0")" && pwd)
src=${SRCDIR:-$here/..}

# Numeric constants that are formats or rates, not limits: file:NAME.
allowed=(
	"lib/webhook_sig.c:SIG_HEX_LEN"         # SHA-256 in hex is 64 digits, by definition
	"lib/digest.h:DIGEST_SHA256_LEN"        # SHA-256's output, 32 bytes by definition (FIPS 180-4)
	"lib/digest.c:BLOCK"                    # SHA-256's block, HMAC's B (RFC 2104 section 2)
	"lib/usage.h:USAGE_PRUNE_ONE_IN"        # how often a POST prunes, not a bound
	# Line lengths of the mail formats themselves (RFC 5322 2.1.1, RFC 2047 2,
	# RFC 2045 6.7), not choices of ours.
	"lib/mail.c:LINE_SOFT"
	"lib/mail.c:EW_LINE"
	"lib/mail.c:EW_OVERHEAD"
	"lib/mail.c:QP_LINE"
	# The geometry of the console's SVG charts (drawing, not limits).
	"lib/chart.c:WIDTH" "lib/chart.c:HEIGHT" "lib/chart.c:LEFT" "lib/chart.c:RIGHT"
	"lib/chart.c:TOP" "lib/chart.c:BOTTOM" "lib/chart.c:BAR_LABEL" "lib/chart.c:BAR_VALUE"
	"lib/chart.c:BAR_ROW" "lib/chart.c:TICKS" "lib/chart.c:MAX_X_LABELS"
	# The layout of the shared metrics file (changing one changes the format).
	"lib/metrics.c:METRICS_VERSION"
	"lib/metrics.c:SLOTS"
	"lib/metrics.c:KEY_LEN"
	"lib/metrics.c:VALUES"
	"lib/ratelimit.c:US_PER_S"              # a unit, not a bound
)

n=0
failed=0
for f in "$src"/lib/*.[ch] "$src"/cgi-bin/*.c; do
	rel=${f#"$src"/}
	[ "$rel" = lib/limits.h ] && continue
	n=$((n + 1))
	bad=
	# "#define NAME 123", "#define NAME (64 * 1024)", "#define NAME \"600\""
	while IFS= read -r name; do
		skip=
		for a in "${allowed[@]}"; do
			[ "$a" = "$rel:$name" ] && skip=1
		done
		[ -z "$skip" ] && bad="$bad $name"
	done < <(sed -En 's/^#define[ \t]+([A-Z_][A-Z0-9_]*)[ \t]+(\(*[0-9]|"[0-9]+").*/\1/p' "$f")
	# config_get_long("NAME", default, min, max, ...) with a literal bound.
	if grep -q 'config_get_long("[A-Z_]*", *[0-9]\|config_get_long([^)]*, *[0-9][0-9]*, *[0-9][0-9]*,' "$f"; then
		bad="$bad config_get_long-literal"
	fi
	if [ -z "$bad" ]; then
		echo "ok $n - $rel: limits come from lib/limits.h"
	else
		echo "not ok $n - $rel: numeric limits outside lib/limits.h:$bad"
		failed=$((failed + 1))
	fi
done
echo "1..$n"
[ "$failed" -eq 0 ]
