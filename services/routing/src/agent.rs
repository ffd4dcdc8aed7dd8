//! User-agent classification for click events: browser, OS, device type and
//! a bot class. Substring rules, checked in order; cheap enough for the hot path.

use serde::Serialize;

/// What a click's user agent says about the clicker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    /// chrome, safari, firefox, edge, opera, samsung, ie, other
    pub browser: &'static str,
    /// ios, android, windows, macos, chromeos, linux, other
    pub os: &'static str,
    /// mobile, tablet, desktop, other
    pub device: &'static str,
    /// human, bot, link-preview, head-probe
    pub bot: &'static str,
}

/// Fetchers that unfurl a link into a preview card (they are not visits).
const PREVIEWERS: &[&str] = &[
    "facebookexternalhit",
    "facebot",
    "twitterbot",
    "slackbot",
    "slack-imgproxy",
    "linkedinbot",
    "whatsapp",
    "telegrambot",
    "discordbot",
    "skypeuripreview",
    "redditbot",
    "pinterest",
    "vkshare",
    "iframely",
    "embedly",
    "mastodon",
    "bitlybot",
    "google-pagerenderer",
    "microsoftpreview",
    "snapchat",
    "viber",
];

/// Automated clients.
const BOTS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "slurp",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "okhttp",
    "java/",
    "libwww",
    "httpclient",
    "headlesschrome",
    "phantomjs",
    "lighthouse",
    "monitor",
    "scrapy",
    "node-fetch",
    "axios/",
    "postman",
    "insomnia",
    "httpie",
];

/// Classifies a user agent; a HEAD request is a probe whatever it claims.
pub fn classify(user_agent: &str, head: bool) -> Agent {
    let ua = user_agent.to_ascii_lowercase();
    let bot = if head {
        "head-probe"
    } else if PREVIEWERS.iter().any(|p| ua.contains(p)) {
        "link-preview"
    } else if ua.trim().is_empty() || BOTS.iter().any(|b| ua.contains(b)) {
        "bot"
    } else {
        "human"
    };
    let os = if ua.contains("iphone") || ua.contains("ipad") || ua.contains("ipod") {
        "ios"
    } else if ua.contains("android") {
        "android"
    } else if ua.contains("windows") {
        "windows"
    } else if ua.contains("cros") {
        "chromeos"
    } else if ua.contains("mac os x") || ua.contains("macintosh") {
        "macos"
    } else if ua.contains("linux") || ua.contains("x11") {
        "linux"
    } else {
        "other"
    };
    let browser =
        if ua.contains("edg/") || ua.contains("edge/") || ua.contains("edga/") || ua.contains("edgios/") {
            "edge"
        } else if ua.contains("opr/") || ua.contains("opera") {
            "opera"
        } else if ua.contains("samsungbrowser") {
            "samsung"
        } else if ua.contains("firefox/") || ua.contains("fxios/") {
            "firefox"
        } else if ua.contains("chrome/") || ua.contains("crios/") || ua.contains("chromium/") {
            "chrome"
        } else if ua.contains("safari/") && (ua.contains("version/") || os == "ios") {
            "safari"
        } else if ua.contains("msie ") || ua.contains("trident/") {
            "ie"
        } else {
            "other"
        };
    let device =
        if ua.contains("ipad") || ua.contains("tablet") || (os == "android" && !ua.contains("mobile")) {
            "tablet"
        } else if ua.contains("mobi") || ua.contains("iphone") || ua.contains("ipod") {
            "mobile"
        } else if matches!(os, "windows" | "macos" | "linux" | "chromeos") {
            "desktop"
        } else {
            "other"
        };
    Agent { browser, os, device, bot }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const TAB: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51";
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const MAC_SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";

    #[test]
    fn common_browsers_systems_and_devices_are_told_apart() {
        assert_eq!(
            classify(IPHONE, false),
            Agent { browser: "safari", os: "ios", device: "mobile", bot: "human" }
        );
        assert_eq!(
            classify(ANDROID, false),
            Agent { browser: "chrome", os: "android", device: "mobile", bot: "human" }
        );
        assert_eq!(classify(TAB, false).device, "tablet");
        assert_eq!(
            classify(EDGE, false),
            Agent { browser: "edge", os: "windows", device: "desktop", bot: "human" }
        );
        assert_eq!(
            classify(FIREFOX, false),
            Agent { browser: "firefox", os: "linux", device: "desktop", bot: "human" }
        );
        assert_eq!(classify(MAC_SAFARI, false).browser, "safari");
        assert_eq!(classify(MAC_SAFARI, false).os, "macos");
    }

    #[test]
    fn bots_previews_and_probes_are_classed() {
        assert_eq!(
            classify("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", false).bot,
            "link-preview"
        );
        assert_eq!(
            classify("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", false).bot,
            "link-preview"
        );
        assert_eq!(classify("WhatsApp/2.23.20.0", false).bot, "link-preview");
        assert_eq!(
            classify("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", false).bot,
            "bot"
        );
        assert_eq!(classify("curl/8.5.0", false).bot, "bot");
        assert_eq!(classify("", false).bot, "bot");
        assert_eq!(classify(IPHONE, true).bot, "head-probe");
    }
}
