// test_data_rule.c: the pixel rule (data_synth_classify) is what scores generated images, so it
// must be right on the real thing: a synthetic set written by data_synth_write and read back
// through the shard reader, compared with each sample's caption. It must also be able to say
// no: shapes drawn here by hand (not by synth.c) come out as what they are and not as any other,
// a triangle pointing down is not the set's triangle, and a blank image is refused.
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/data.h"
#include "test.h"

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_dir(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

// Real images: every sample with an image, colour and shape against the caption.
static void test_real(test_counts *tc, const char *root, int side, uint64_t n) {
    char dir[4096], train[4200];
    snprintf(dir, sizeof(dir), "%s/synth%d", root, side);
    data_synth_cfg sc;
    data_synth_default(&sc);
    sc.synth_h = sc.synth_w = side;
    mm_err err;
    TEST_CHECK(tc, data_synth_write(dir, n, 99, &sc, &err) == 0, "synth: %s", err.msg);
    snprintf(train, sizeof(train), "%s/train", dir);
    data_dataset *ds;
    if (data_dataset_open(&ds, train, 1, &err)) {
        TEST_CHECK(tc, 0, "open: %s", err.msg);
        return;
    }
    const data_schema *s = data_dataset_schema(ds);
    data_audio_cfg ac = {256, 128, 32};
    data_featurizer *f = data_featurizer_new(s, &ac);
    enum { CHUNK = 100 };
    data_batch b;
    data_batch_alloc(&b, CHUNK, s, &ac);
    size_t npix = (size_t)s->img_h * s->img_w * s->img_c;
    uint8_t *img = malloc(npix);
    int n_img = 0, right[2] = {0, 0}, refused = 0, bad_caption = 0;
    int confusion[4][4] = {{0}};
    for (uint64_t at = 0; at < s->n_samples; at += CHUNK) {
        uint64_t idx[CHUNK];
        int m = (int)(s->n_samples - at < CHUNK ? s->n_samples - at : CHUNK);
        for (int i = 0; i < m; i++) idx[i] = at + (uint64_t)i;
        if (data_dataset_read(ds, idx, m, f, &b, &err)) {
            TEST_CHECK(tc, 0, "read: %s", err.msg);
            break;
        }
        for (int i = 0; i < m; i++) {
            int attr[DATA_N_ATTR];
            if (data_synth_attrs(b.text + (size_t)i * b.text_T, attr)) {
                bad_caption++;
                continue;
            }
            if (!b.has_image[i]) continue;
            n_img++;
            // back to the stored bytes (the loader's u8 / 127.5 - 1 inverted)
            data_image_to_u8(b.image + (size_t)i * npix, (int)npix, img);
            int col, shp;
            if (data_synth_classify(img, s->img_h, s->img_w, s->img_c, &col, &shp)) {
                refused++;
                continue;
            }
            right[0] += col == attr[0];
            right[1] += shp == attr[1];
            confusion[attr[1]][shp]++;
        }
    }
    double acc_c = (double)right[0] / (n_img ? n_img : 1), acc_s = (double)right[1] / (n_img ? n_img : 1);
    printf("pixel rule on %d real %dx%d images: colour %.2f%%, shape %.2f%%\n", n_img, side, side,
           100 * acc_c, 100 * acc_s);
    printf("  shape confusion (rows = caption circle/square/triangle/cross):");
    for (int a = 0; a < 4; a++) printf(" [%d %d %d %d]", confusion[a][0], confusion[a][1],
                                       confusion[a][2], confusion[a][3]);
    printf("\n");
    TEST_CHECK(tc, bad_caption == 0 && refused == 0 && n_img > 0.8 * (double)n,
               "%d bad captions, %d images refused, %d images", bad_caption, refused, n_img);
    TEST_CHECK(tc, acc_c >= 0.95, "colour accuracy %.4f", acc_c);
    TEST_CHECK(tc, acc_s >= 0.95, "shape accuracy %.4f", acc_s);
    free(img);
    data_batch_free(&b);
    data_featurizer_free(f);
    data_dataset_close(ds);
}

// ---------------------------------------------------------------------------------------
// Hand-drawn images, with geometry written here from the shapes' definitions (a disc, a
// square, an isosceles triangle apex up, a plus sign), not copied from synth.c.
enum { HW = 32 };
enum { CIRCLE, SQUARE, TRIANGLE, CROSS, TRIANGLE_DOWN, BAR };

static int hand_inside(int kind, double dx, double dy, double r) {
    double ax = fabs(dx), ay = fabs(dy);
    switch (kind) {
        case CIRCLE: return dx * dx + dy * dy <= r * r;
        case SQUARE: return ax <= 0.75 * r && ay <= 0.75 * r;
        case TRIANGLE: return dy >= -r && dy <= 0.8 * r && ax <= 0.5 * (dy + r);
        case TRIANGLE_DOWN: return dy <= r && dy >= -0.8 * r && ax <= 0.5 * (r - dy);
        case CROSS: return (ax <= 0.25 * r && ay <= r) || (ay <= 0.25 * r && ax <= r);
        default: return ax <= r && ay <= 0.3 * r;  // a flat bar
    }
}

static void hand_draw(uint8_t *img, int kind, double cx, double cy, double r, const uint8_t rgb[3],
                      unsigned seed) {
    for (int i = 0; i < HW * HW * 3; i++) {
        seed = seed * 1103515245u + 12345u;
        img[i] = (uint8_t)(10 + (seed >> 16) % 30);  // dark noise
    }
    for (int y = 0; y < HW; y++)
        for (int x = 0; x < HW; x++)
            if (hand_inside(kind, x + 0.5 - cx, y + 0.5 - cy, r)) memcpy(img + (y * HW + x) * 3, rgb, 3);
}

static void test_hand(test_counts *tc) {
    static const char *names[4] = {"circle", "square", "triangle", "cross"};
    const uint8_t rgb[6][3] = {{230, 50, 30},  {50, 190, 70},   {40, 80, 230},
                               {230, 230, 60}, {170, 70, 200}, {240, 240, 240}};
    uint8_t img[HW * HW * 3];
    int bad = 0, total = 0;
    for (int kind = 0; kind < 4; kind++)
        for (int k = 0; k < 6; k++) {
            double r = k % 2 ? 9.0 : 5.5, cx = 10.0 + 2.3 * k, cy = 16.4 - 0.7 * k;
            hand_draw(img, kind, cx, cy, r, rgb[k], 17u * (unsigned)k + (unsigned)kind);
            int col, shp;
            int rc = data_synth_classify(img, HW, HW, 3, &col, &shp);
            total++;
            if (rc || col != k || shp != kind) {
                bad++;
                fprintf(stderr, "hand %s colour %d r %.1f: got colour %d shape %d\n", names[kind],
                        k, r, col, shp);
            }
        }
    TEST_CHECK(tc, bad == 0, "%d of %d hand-drawn shapes misread", bad, total);

    // shapes that are none of the four: the rule reads geometry, it does not guess
    int col, shp;
    hand_draw(img, TRIANGLE_DOWN, 16, 16, 9, rgb[0], 3);
    TEST_CHECK(tc, data_synth_classify(img, HW, HW, 3, &col, &shp) == 0 && shp != TRIANGLE,
               "a triangle pointing down is not read as the set's (apex-up) triangle: %d", shp);
    // a flat bar fills its box like a square (the rule has no "none" answer), never a cross
    hand_draw(img, BAR, 16, 16, 9, rgb[1], 4);
    TEST_CHECK(tc, data_synth_classify(img, HW, HW, 3, &col, &shp) == 0 && shp == SQUARE &&
                       col == 1,
               "a flat bar: shape %d colour %d", shp, col);

    // a stray bright pixel far away must not stretch the shape
    hand_draw(img, CROSS, 20, 18, 8, rgb[2], 5);
    memcpy(img + (1 * HW + 1) * 3, rgb[5], 3);
    TEST_CHECK(tc, data_synth_classify(img, HW, HW, 3, &col, &shp) == 0 && shp == CROSS && col == 2,
               "cross with a stray pixel: shape %d colour %d", shp, col);

    // nothing bright: refused
    hand_draw(img, CIRCLE, 16, 16, 0.0, rgb[0], 6);
    TEST_CHECK(tc, data_synth_classify(img, HW, HW, 3, &col, &shp) == -1 && col == -1 && shp == -1,
               "blank image refused");
    TEST_CHECK(tc, data_synth_classify(img, HW, HW, 1, &col, &shp) == -1, "grey image refused");
}

static void test_attrs(test_counts *tc) {
    int a[DATA_N_ATTR];
    TEST_CHECK(tc, data_synth_attrs("on the top: a large purple cross", a) == 0 && a[0] == 4 &&
                       a[1] == 3 && a[2] == 1 && a[3] == 2,
               "caption parsed");
    TEST_CHECK(tc, data_synth_attrs("a red blue circle", a) == -1 && a[0] == -1 && a[1] == 0 &&
                       a[2] == -1 && a[3] == -1,
               "two colours and missing words give -1");
}

int main(void) {
    test_counts tc = {0, 0};
    char root[] = "/tmp/mmtrain_test_rule_XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_attrs(&tc);
    test_hand(&tc);
    test_real(&tc, root, 32, 1000);
    test_real(&tc, root, 48, 300);  // the rule has no 32-pixel constant in it
    rm_dir(root);
    return test_finish(&tc);
}
