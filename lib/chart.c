#include <math.h>
#include <stdio.h>

#include "chart.h"

/* The drawing area of columns and lines (SVG user units; the page scales it). */
#define WIDTH 720.0
#define HEIGHT 240.0
#define LEFT 64.0
#define RIGHT 12.0
#define TOP 12.0
#define BOTTOM 28.0
/* Horizontal bars: label column and the height of one row. */
#define BAR_LABEL 150.0
#define BAR_VALUE 110.0
#define BAR_ROW 26.0
/* Gridlines an axis aims at, and at most this many x labels. */
#define TICKS 4
#define MAX_X_LABELS 12

void
chart_axis(double *lo, double *hi, int ticks, double *step)
{
	double raw, mag, f;

	if (*lo > 0)
		*lo = 0;
	if (*hi < 0)
		*hi = 0;
	if (*hi - *lo <= 0)
		*hi = *lo + 1;
	raw = (*hi - *lo) / (ticks > 0 ? ticks : 1);
	mag = pow(10, floor(log10(raw)));
	f = raw / mag;
	*step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
	*lo = floor(*lo / *step + 1e-9) * *step;
	*hi = ceil(*hi / *step - 1e-9) * *step;
}

/* An axis label: short (12.5k, 3M, 40 %). */
static void
tick_label(struct html *h, const struct chart *c, double v)
{
	double a;

	if (c->format == CHART_PERCENT) {
		html_rawf(h, "%g&nbsp;%%", round(v * 1000.0) / 10.0);
		return;
	}
	if (c->format == CHART_MONEY && !html_zero_decimal(c->currency))
		v /= 100.0;
	a = fabs(v);
	if (a >= 1e6)
		html_rawf(h, "%gM", round(v / 1e5) / 10.0);
	else if (a >= 1e3)
		html_rawf(h, "%gk", round(v / 1e2) / 10.0);
	else
		html_rawf(h, "%g", round(v * 100.0) / 100.0);
}

/* A value in full, for tooltips. */
static void
value_text(struct html *h, const struct chart *c, double v)
{
	if (isnan(v))
		html_raw(h, "no value");
	else if (c->format == CHART_MONEY)
		html_money(h, llround(v), c->currency);
	else if (c->format == CHART_PERCENT)
		html_percent(h, v, 2);
	else
		html_int(h, llround(v));
}

static void
svg_open(struct html *h, const struct chart *c, double height)
{
	html_rawf(h, "<svg class=\"chart\" viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"",
	    WIDTH, height);
	html_attr(h, c->title);
	html_raw(h, "\">");
}

static void
legend(struct html *h, const struct chart *c)
{
	size_t s;

	if (c->nseries < 2)
		return;
	html_raw(h, "<ul class=\"legend\">");
	for (s = 0; s < c->nseries; s++) {
		html_rawf(h, "<li><span class=\"key %s\"></span>", c->series[s].css);
		html_txt(h, c->series[s].name);
		html_raw(h, "</li>");
	}
	html_raw(h, "</ul>");
}

/* The tooltip of one value: "2026-03 · New: 1,200.00 USD". */
static void
tooltip(struct html *h, const struct chart *c, size_t i, size_t s)
{
	html_raw(h, "<title>");
	html_txt(h, c->labels[i]);
	if (c->nseries > 1 || c->series[s].name) {
		html_raw(h, " &middot; ");
		html_txt(h, c->series[s].name);
	}
	html_raw(h, ": ");
	value_text(h, c, c->series[s].values[i]);
	html_raw(h, "</title>");
}

/* The value range of a chart: stacked sums, or single values. */
static void
value_range(const struct chart *c, int stacked, double *lo, double *hi)
{
	double pos, neg, v;
	size_t i, s;

	*lo = *hi = 0;
	for (i = 0; i < c->n; i++) {
		pos = neg = 0;
		for (s = 0; s < c->nseries; s++) {
			v = c->series[s].values[i];
			if (isnan(v))
				continue;
			if (!stacked) {
				pos = fmax(pos, v);
				neg = fmin(neg, v);
			} else if (v > 0)
				pos += v;
			else
				neg += v;
		}
		*hi = fmax(*hi, pos);
		*lo = fmin(*lo, neg);
	}
}

/* Gridlines with their labels, and the x labels under the plot. */
static void
frame(struct html *h, const struct chart *c, double lo, double hi, double step)
{
	double plot_h = HEIGHT - TOP - BOTTOM, slot = (WIDTH - LEFT - RIGHT) / (double)c->n;
	double v, y;
	size_t i, every = (c->n + MAX_X_LABELS - 1) / MAX_X_LABELS;

	for (v = lo; v <= hi + step / 2; v += step) {
		y = TOP + (hi - v) / (hi - lo) * plot_h;
		html_rawf(h, "<line class=\"%s\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
		    fabs(v) < step / 2 ? "zero" : "grid", LEFT, y, WIDTH - RIGHT, y);
		html_rawf(h, "<text class=\"ylab\" x=\"%.1f\" y=\"%.1f\">", LEFT - 6, y + 4);
		tick_label(h, c, fabs(v) < step / 2 ? 0 : v);
		html_raw(h, "</text>");
	}
	for (i = 0; i < c->n; i += every ? every : 1) {
		html_rawf(h, "<text class=\"xlab\" x=\"%.1f\" y=\"%.1f\">",
		    LEFT + slot * ((double)i + 0.5), HEIGHT - BOTTOM + 18);
		html_txt(h, c->labels[i]);
		html_raw(h, "</text>");
	}
}

void
chart_columns(struct html *h, const struct chart *c)
{
	double lo, hi, step, plot_h = HEIGHT - TOP - BOTTOM, slot, bar, x, v, up, down, y0, y1;
	size_t i, s;

	if (c->n == 0)
		return;
	value_range(c, 1, &lo, &hi);
	chart_axis(&lo, &hi, TICKS, &step);
	slot = (WIDTH - LEFT - RIGHT) / (double)c->n;
	bar = slot * 0.7;
	svg_open(h, c, HEIGHT);
	frame(h, c, lo, hi, step);
#define Y(val) (TOP + (hi - (val)) / (hi - lo) * plot_h)
	for (i = 0; i < c->n; i++) {
		x = LEFT + slot * (double)i + (slot - bar) / 2;
		up = down = 0;
		for (s = 0; s < c->nseries; s++) {
			v = c->series[s].values[i];
			if (isnan(v) || v == 0)
				continue;
			if (v > 0) {
				y0 = Y(up + v);
				y1 = Y(up);
				up += v;
			} else {
				y0 = Y(down);
				y1 = Y(down + v);
				down += v;
			}
			html_rawf(h, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
			    "height=\"%.1f\">", c->series[s].css, x, y0, bar,
			    fmax(y1 - y0, 0.5));
			tooltip(h, c, i, s);
			html_raw(h, "</rect>");
		}
	}
#undef Y
	html_raw(h, "</svg>");
	legend(h, c);
}

void
chart_lines(struct html *h, const struct chart *c)
{
	double lo, hi, step, plot_h = HEIGHT - TOP - BOTTOM, slot, v, x, y;
	size_t i, s;
	int open;

	if (c->n == 0)
		return;
	value_range(c, 0, &lo, &hi);
	chart_axis(&lo, &hi, TICKS, &step);
	slot = (WIDTH - LEFT - RIGHT) / (double)c->n;
	svg_open(h, c, HEIGHT);
	frame(h, c, lo, hi, step);
	for (s = 0; s < c->nseries; s++) {
		/* One polyline per run of values, so a missing month is a gap. */
		open = 0;
		for (i = 0; i < c->n; i++) {
			v = c->series[s].values[i];
			if (isnan(v)) {
				if (open)
					html_raw(h, "\"/>");
				open = 0;
				continue;
			}
			x = LEFT + slot * ((double)i + 0.5);
			y = TOP + (hi - v) / (hi - lo) * plot_h;
			if (!open)
				html_rawf(h, "<polyline class=\"ln %s\" points=\"", c->series[s].css);
			html_rawf(h, "%s%.1f,%.1f", open ? " " : "", x, y);
			open = 1;
		}
		if (open)
			html_raw(h, "\"/>");
		for (i = 0; i < c->n; i++) {
			v = c->series[s].values[i];
			if (isnan(v))
				continue;
			html_rawf(h, "<circle class=\"%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\">",
			    c->series[s].css, LEFT + slot * ((double)i + 0.5),
			    TOP + (hi - v) / (hi - lo) * plot_h);
			tooltip(h, c, i, s);
			html_raw(h, "</circle>");
		}
	}
	html_raw(h, "</svg>");
	legend(h, c);
}

void
chart_bars(struct html *h, const struct chart *c, double max)
{
	double lo = 0, hi, span = WIDTH - BAR_LABEL - BAR_VALUE, x, w, v, total, y;
	size_t i, s;
	int any;

	if (c->n == 0)
		return;
	value_range(c, 1, &lo, &hi);
	if (max > 0)
		hi = max;
	if (hi <= 0)
		hi = 1;
	svg_open(h, c, BAR_ROW * (double)c->n + 8);
	for (i = 0; i < c->n; i++) {
		y = 4 + BAR_ROW * (double)i;
		html_rawf(h, "<text class=\"rlab\" x=\"%.1f\" y=\"%.1f\">", BAR_LABEL - 8,
		    y + BAR_ROW / 2 + 4);
		html_txt(h, c->labels[i]);
		html_raw(h, "</text>");
		html_rawf(h, "<rect class=\"track\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
		    "height=\"%.1f\"/>", BAR_LABEL, y + 4, span, BAR_ROW - 8);
		x = BAR_LABEL;
		total = 0;
		any = 0;
		for (s = 0; s < c->nseries; s++) {
			v = c->series[s].values[i];
			if (isnan(v) || v <= 0)
				continue;
			any = 1;
			total += v;
			w = fmin(v / hi * span, BAR_LABEL + span - x);
			html_rawf(h, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
			    "height=\"%.1f\">", c->series[s].css, x, y + 4, fmax(w, 0.5),
			    BAR_ROW - 8);
			tooltip(h, c, i, s);
			html_raw(h, "</rect>");
			x += w;
		}
		html_rawf(h, "<text class=\"vlab\" x=\"%.1f\" y=\"%.1f\">", BAR_LABEL + span + 6,
		    y + BAR_ROW / 2 + 4);
		if (any || c->nseries > 1)
			value_text(h, c, total);
		else
			html_raw(h, "&ndash;");
		html_raw(h, "</text>");
	}
	html_raw(h, "</svg>");
	legend(h, c);
}
