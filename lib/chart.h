/*
 * Charts as inline SVG, computed here from the numbers (no script, no
 * external resource): the console's pages draw them into their html.
 * Geometry is SVG attributes; colours are classes of the page's style
 * sheet (c1..c8, see console.c), so a strict Content-Security-Policy
 * holds.  Every bar and point carries a <title> with its exact value
 * (a tooltip, and what a screen reader reads), and the legend is HTML.
 */
#ifndef CHART_H
#define CHART_H

#include <stddef.h>

#include "html.h"

enum chart_format {
	CHART_MONEY,	/* minor units of chart.currency */
	CHART_COUNT,
	CHART_PERCENT,	/* fractions: 0.05 is 5 % */
	CHART__MAX
};

struct chart_series {
	const char *name;	/* legend and tooltip text (escaped) */
	const char *css;	/* a class of the style sheet, a literal: "c1" */
	const double *values;	/* one per label; NAN: no value (a gap) */
};

struct chart {
	const char *title;	/* the chart's accessible name (escaped) */
	const char *const *labels;	/* n category labels ("2026-01", "pro") */
	size_t n;
	const struct chart_series *series;
	size_t nseries;
	enum chart_format format;
	const char *currency;	/* CHART_MONEY: the currency of the amounts */
};

/*
 * Vertical columns, one per label, the series stacked; negative values
 * stack downwards from the zero line (MRR movements: churn below).
 */
void chart_columns(struct html *h, const struct chart *c);

/* One line per series over the labels; NAN values leave a gap. */
void chart_lines(struct html *h, const struct chart *c);

/*
 * Horizontal bars, one row per label, the series stacked from the left.
 * max > 0 fixes the scale (1.0 for a utilisation); 0 scales to the
 * longest row.
 */
void chart_bars(struct html *h, const struct chart *c, double max);

/*
 * A "nice" axis for the range [lo, hi] with about `ticks` steps (1, 2 or
 * 5 times a power of ten): *step, and lo/hi widened to multiples of it.
 * Exposed for the unit test.
 */
void chart_axis(double *lo, double *hi, int ticks, double *step);

#endif
