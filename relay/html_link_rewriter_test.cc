#include "relay/html_link_rewriter.h"

#include <gtest/gtest.h>

#include <string>

namespace rdv {
namespace {

TunnelContext Tunnel() { return MakeTunnelContext("www.orang.com", "/"); }

std::string Whole(std::string_view html) {
  HtmlLinkRewriter rewriter(Tunnel());
  std::string out;
  rewriter.OnData(html, true, out);
  return out;
}

// Feeds `html` split at every pair of points (three pieces, the middle one possibly empty) and
// expects the same output as in one piece.
void ExpectSplitInvariant(std::string_view html) {
  const std::string whole = Whole(html);
  for (size_t a = 0; a <= html.size(); ++a) {
    for (size_t b = a; b <= html.size(); ++b) {
      HtmlLinkRewriter rewriter(Tunnel());
      std::string out;
      rewriter.OnData(html.substr(0, a), false, out);
      rewriter.OnData(html.substr(a, b - a), false, out);
      rewriter.OnData(html.substr(b), false, out);
      rewriter.OnData({}, true, out);
      ASSERT_EQ(out, whole) << "split at " << a << "," << b;
    }
  }
}

TEST(HtmlLinkRewriter, RewritesLinkAttributes) {
  EXPECT_EQ(Whole(R"(<a href="/x">x</a>)"), R"(<a href="/TUNNEL:www.orang.com/x">x</a>)");
  EXPECT_EQ(Whole(R"(<img SRC='/i.png' alt="/no">)"),
            R"(<img SRC='/TUNNEL:www.orang.com/i.png' alt="/no">)");
  EXPECT_EQ(Whole(R"(<form method=post action=/login><button formaction="/b">)"),
            R"(<form method=post action=/TUNNEL:www.orang.com/login><button )"
            R"(formaction="/TUNNEL:www.orang.com/b">)");
  EXPECT_EQ(Whole(R"(<script src="http://www.orang.com/app.js"></script>)"),
            R"(<script src="/TUNNEL:www.orang.com/app.js"></script>)");
  EXPECT_EQ(Whole("<link rel=stylesheet href=//www.orang.com/s.css>"),
            "<link rel=stylesheet href=/TUNNEL:www.orang.com/s.css>");
  EXPECT_EQ(Whole(R"(<base href="/">)"), R"(<base href="/TUNNEL:www.orang.com/">)");
  EXPECT_EQ(Whole(R"(<video poster = "/p.jpg"/>)"),
            R"(<video poster = "/TUNNEL:www.orang.com/p.jpg"/>)");
}

TEST(HtmlLinkRewriter, LeavesOtherLinksAlone) {
  for (const char* html :
       {R"(<a href="style.css">)", R"(<a href="../x">)", R"(<a href="//cdn.net/x">)",
        R"(<a href="http://other.net/">)", R"(<a href="#top">)", R"(<a href>)", R"(<a href="">)",
        R"(<a data-href="/x">)", R"(<a title="/x">)", "plain text / with <b>slashes</b>",
        R"(<a href="/TUNNEL:www.orang.com/x">)"}) {
    EXPECT_EQ(Whole(html), html);
  }
}

TEST(HtmlLinkRewriter, Srcset) {
  EXPECT_EQ(Whole(R"(<img srcset="/a.png 1x, /b.png 2x,c.png 3x">)"),
            R"(<img srcset="/TUNNEL:www.orang.com/a.png 1x, /TUNNEL:www.orang.com/b.png 2x,)"
            R"(c.png 3x">)");
  EXPECT_EQ(Whole(R"(<img srcset="/a.png,/b.png">)"),
            R"(<img srcset="/TUNNEL:www.orang.com/a.png,/b.png">)");
  EXPECT_EQ(Whole(R"(<source srcset="/a.png 100w , http://www.orang.com/b.png 200w">)"),
            R"(<source srcset="/TUNNEL:www.orang.com/a.png 100w , )"
            R"(/TUNNEL:www.orang.com/b.png 200w">)");
}

TEST(HtmlLinkRewriter, SkipsScriptStyleAndComments) {
  for (const char* html :
       {R"(<script>var s = '<a href="/x">';</script>)",
        R"(<SCRIPT type="x">document.write("<img src='/y'>")</SCRIPT >)",
        R"(<style>a[href="/x"]{}</style>)", R"(<!-- <a href="/x"> -->)",
        R"(<!--- <a href="/x"> --->)", R"(<!DOCTYPE html><textarea><a href="/x"></textarea>)",
        R"(<title>About <a href="/x"></title>)"}) {
    EXPECT_EQ(Whole(html), html);
  }
  // After them, rewriting resumes.
  EXPECT_EQ(Whole(R"(<script>if (a</b) x()</script><a href="/x">)"),
            R"(<script>if (a</b) x()</script><a href="/TUNNEL:www.orang.com/x">)");
  EXPECT_EQ(Whole(R"(<!-- c --><a href="/x">)"), R"(<!-- c --><a href="/TUNNEL:www.orang.com/x">)");
  EXPECT_EQ(Whole(R"(<!doctype html><a href="/x">)"),
            R"(<!doctype html><a href="/TUNNEL:www.orang.com/x">)");
}

TEST(HtmlLinkRewriter, EveryPairOfSplitPoints) {
  ExpectSplitInvariant(
      "<!DOCTYPE html>\n<html><head><link rel=\"stylesheet\" href=\"style.css\">"
      "<script src='/app.js'></script><style>p{}</style></head><body>"
      "<!-- <a href=\"/c\"> --><a href=/plain>x</a><img srcset=\"/a 1x, /b 2x\">"
      "<form action=\"http://www.orang.com/f\"></form></body></html>");
}

TEST(HtmlLinkRewriter, EverySplitPointOfMixedDocument) {
  // One split point over a longer document; compared against the known answer.
  const std::string html =
      R"(<html><body><a href="/a">a</a><script>x="<a href='/s'>"</script>)"
      R"(<img src=http://www.orang.com/i.png><a href="rel">r</a></body></html>)";
  const std::string expected =
      R"(<html><body><a href="/TUNNEL:www.orang.com/a">a</a><script>x="<a href='/s'>"</script>)"
      R"(<img src=/TUNNEL:www.orang.com/i.png><a href="rel">r</a></body></html>)";
  for (size_t a = 0; a <= html.size(); ++a) {
    HtmlLinkRewriter rewriter(Tunnel());
    std::string out;
    rewriter.OnData(std::string_view(html).substr(0, a), false, out);
    rewriter.OnData(std::string_view(html).substr(a), true, out);
    EXPECT_EQ(out, expected) << "split at " << a;
  }
}

TEST(HtmlLinkRewriter, BoundedHolding) {
  HtmlLinkRewriter rewriter(Tunnel());
  std::string out;
  std::string html = "<a href=\"/" + std::string(3 * HtmlLinkRewriter::kMaxHeldValue, 'x') + "\">";
  for (char c : html) {
    rewriter.OnData(std::string_view(&c, 1), false, out);
    EXPECT_LE(rewriter.held(), HtmlLinkRewriter::kMaxHeldValue);
  }
  rewriter.OnData({}, true, out);
  EXPECT_EQ(out, html);  // too long: unchanged
}

TEST(HtmlLinkRewriter, EndInsideValueFlushesUnchanged) {
  HtmlLinkRewriter rewriter(Tunnel());
  std::string out;
  rewriter.OnData("<a href=\"/x", false, out);
  EXPECT_EQ(out, "<a href=\"");
  EXPECT_EQ(rewriter.held(), 2u);
  rewriter.OnData({}, true, out);
  EXPECT_EQ(out, "<a href=\"/x");
  EXPECT_EQ(rewriter.held(), 0u);
}

}  // namespace
}  // namespace rdv
