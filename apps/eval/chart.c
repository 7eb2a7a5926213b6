/*
 * The evaluation's chart, an SVG drawn here: one numbered point per
 * strategy, rep-4 (up = more repetitive) against judge bits/byte and against
 * tokens decoded per kept token, with ±1 standard error bars over seeds,
 * and a legend of the numbers.
 */
#include "eval/report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PANEL_W = 480, PANEL_H = 420, MARGIN_L = 70, MARGIN_R = 24, MARGIN_T = 44, MARGIN_B = 56, LEGEND_W = 250 };

static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
                                     "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#637939"};

typedef struct point {
    const char *label;
    double x, y, x_err, y_err; /* errors: NaN = none */
    const char *color;
} point;

typedef struct axis {
    double lo, hi, step;
} axis;

typedef struct box {
    double x, y, w, h;
} box;

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A range holding every value and its error bar, on round tick steps. */
static axis nice_axis(const point *pts, int n, bool use_x) {
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        double v = use_x ? pts[i].x : pts[i].y, e = use_x ? pts[i].x_err : pts[i].y_err;
        if (isnan(v)) continue;
        if (isnan(e)) e = 0;
        if (v - e < lo) lo = v - e;
        if (v + e > hi) hi = v + e;
    }
    if (!isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-9) {
        double pad = fabs(lo) > 1e-9 ? fabs(lo) * 0.05 : 0.5;
        lo -= pad;
        hi += pad;
    }
    double margin = (hi - lo) * 0.06; /* no point on the frame ... */
    lo = lo >= 0 && lo - margin < 0 ? 0 : lo - margin; /* ... nor a negative rate */
    hi += margin;
    double raw = (hi - lo) / 5.0, mag = pow(10.0, floor(log10(raw))), step = mag;
    if (raw / mag > 5) step = 10 * mag;
    else if (raw / mag > 2) step = 5 * mag;
    else if (raw / mag > 1) step = 2 * mag;
    return (axis){floor(lo / step) * step, ceil(hi / step) * step, step};
}

static bool overlaps(const box *a, const box *b) {
    return a->x < b->x + b->w && b->x < a->x + a->w && a->y < b->y + b->h && b->y < a->y + a->h;
}

static void draw_axes(FILE *f, double ox, const axis *ax, const axis *ay, const char *x_label, const char *y_label,
                      const char *title) {
    double x0 = ox + MARGIN_L, x1 = ox + PANEL_W - MARGIN_R, y0 = PANEL_H - MARGIN_B, y1 = MARGIN_T;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", x0, y1,
            x1 - x0, y0 - y1);
    for (double t = ax->lo; t <= ax->hi + ax->step / 2; t += ax->step) {
        double x = x0 + (t - ax->lo) / (ax->hi - ax->lo) * (x1 - x0);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x, y1, x, y0);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.4g</text>\n", x, y0 + 16, t);
    }
    for (double t = ay->lo; t <= ay->hi + ay->step / 2; t += ay->step) {
        double y = y0 - (t - ay->lo) / (ay->hi - ay->lo) * (y0 - y1);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x1, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", x0 - 6, y + 4, t);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (x0 + x1) / 2, (double)PANEL_H - 16);
    xml_text(f, x_label);
    fprintf(f, "</text>\n<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">", ox + 18,
            (y0 + y1) / 2);
    xml_text(f, y_label);
    fprintf(f, "</text>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">", (x0 + x1) / 2,
            (double)MARGIN_T - 16);
    xml_text(f, title);
    fputs("</text>\n", f);
}

/* The label goes next to its point, in the first spot that is inside the
 * plot and clear of the labels already placed. */
static box place_label(double px, double py, double w, const box *plot, const box *placed, int n_placed) {
    const double offsets[][2] = {{7, -13}, {7, 1}, {-7 - w, -13}, {-7 - w, 1}, {-w / 2, -20}, {-w / 2, 7}};
    box best = {px + 7, py - 13, w, 14};
    for (int ring = 0; ring < 6; ring++)
        for (size_t o = 0; o < sizeof offsets / sizeof offsets[0]; o++) {
            box b = {px + offsets[o][0] * (1 + ring), py + offsets[o][1] * (1 + ring), w, 14};
            if (b.x < plot->x || b.y < plot->y || b.x + b.w > plot->x + plot->w || b.y + b.h > plot->y + plot->h)
                continue;
            bool clash = false;
            for (int k = 0; k < n_placed && !clash; k++) clash = overlaps(&b, &placed[k]);
            if (!clash) return b;
        }
    return best;
}

static void draw_panel(FILE *f, double ox, const point *pts, int n, const char *x_label, const char *title) {
    axis ax = nice_axis(pts, n, true), ay = nice_axis(pts, n, false);
    draw_axes(f, ox, &ax, &ay, x_label, "rep-4 (1 - unique 4-grams / 4-grams)", title);
    double x0 = ox + MARGIN_L, x1 = ox + PANEL_W - MARGIN_R, y0 = PANEL_H - MARGIN_B, y1 = MARGIN_T;
    box plot = {x0, y1, x1 - x0, y0 - y1};
#define PX(v) (x0 + ((v) - ax.lo) / (ax.hi - ax.lo) * (x1 - x0))
#define PY(v) (y0 - ((v) - ay.lo) / (ay.hi - ay.lo) * (y0 - y1))
    box *placed = calloc((size_t)(n > 0 ? n : 1), sizeof *placed);
    int n_placed = 0;
    for (int i = 0; i < n; i++) {
        const point *p = &pts[i];
        if (isnan(p->x) || isnan(p->y)) continue;
        double px = PX(p->x), py = PY(p->y);
        if (!isnan(p->x_err) && p->x_err > 0)
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", PX(p->x - p->x_err),
                    py, PX(p->x + p->x_err), py, p->color);
        if (!isnan(p->y_err) && p->y_err > 0)
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", px,
                    PY(p->y - p->y_err), px, PY(p->y + p->y_err), p->color);
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%s\" fill-opacity=\"0.8\"/>\n", px, py, p->color);
        char number[16];
        snprintf(number, sizeof number, "%d", i + 1);
        box b = place_label(px, py, 7.0 * (double)strlen(number), &plot, placed, n_placed);
        if (placed) placed[n_placed++] = b;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\" font-weight=\"bold\">%s</text>\n", b.x, b.y + 11, p->color,
                number);
    }
    free(placed);
#undef PX
#undef PY
}

/* Number, colour and name of every strategy. */
static void draw_legend(FILE *f, double ox, const point *pts, int n) {
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-weight=\"bold\">strategies</text>\n", ox + 8, MARGIN_T);
    for (int i = 0; i < n; i++) {
        double y = MARGIN_T + 18 + 17.0 * i;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"%s\"/>\n", ox + 8, y - 8, pts[i].color);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\"><tspan font-weight=\"bold\">%d</tspan> ", ox + 22, y, i + 1);
        xml_text(f, pts[i].label);
        fputs("</text>\n", f);
    }
}

int eval_write_chart(FILE *f, const eval_report *r) {
    int n = r->n_strategies;
    point *by_nll = calloc((size_t)n, sizeof *by_nll), *by_cost = calloc((size_t)n, sizeof *by_cost);
    if (!by_nll || !by_cost) {
        free(by_nll);
        free(by_cost);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const eval_summary *s = &r->summaries[i];
        const char *color = COLORS[i % (int)(sizeof COLORS / sizeof COLORS[0])];
        double y = s->metric[EVAL_REP_4].mean, y_err = s->metric[EVAL_REP_4].se;
        by_nll[i] = (point){r->strategies[i].spec, s->metric[EVAL_JUDGE_BPB].mean, y, s->metric[EVAL_JUDGE_BPB].se,
                            y_err, color};
        by_cost[i] = (point){r->strategies[i].spec, s->metric[EVAL_DECODED_PER_KEPT].mean, y,
                             s->metric[EVAL_DECODED_PER_KEPT].se, y_err, color};
    }
    bool judged = r->judge_description != NULL;
    int width = (judged ? 2 * PANEL_W : PANEL_W) + LEGEND_W;
    int height = PANEL_H > MARGIN_T + 30 + 17 * n ? PANEL_H : MARGIN_T + 30 + 17 * n;
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height, width, height);
    fputs("<title>", f);
    xml_text(f, r->model_description);
    fputs("</title>\n", f);
    double ox = 0;
    if (judged) {
        draw_panel(f, ox, by_nll, n, "judge bits per byte (lower = more plausible)",
                   "repetition vs judge bits/byte: lower-left is better");
        ox += PANEL_W;
    }
    draw_panel(f, ox, by_cost, n, "tokens decoded per kept token (cost)", "repetition vs cost: lower-left is better");
    draw_legend(f, ox + PANEL_W, by_cost, n);
    fputs("</svg>\n", f);
    free(by_nll);
    free(by_cost);
    return ferror(f) ? -1 : 0;
}
