//! User-agent classification for click events: browser, OS, device type and
//! a bot class. Substring rules, checked in order over one pass of an
//! Aho-Corasick automaton; cheap enough for the hot path.

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

macro_rules! tokens {
    ($($name:ident = $text:literal,)*) => {
        /// The substrings the OS, browser and device rules look for.
        #[derive(Debug, Clone, Copy)]
        enum T { $($name,)* }
        const TOKENS: &[&str] = &[$($text,)*];
    };
}

tokens! {
    Iphone = "iphone",
    Ipad = "ipad",
    Ipod = "ipod",
    Android = "android",
    Windows = "windows",
    Cros = "cros",
    MacOsX = "mac os x",
    Macintosh = "macintosh",
    Linux = "linux",
    X11 = "x11",
    Edg = "edg/",
    Edge = "edge/",
    Edga = "edga/",
    Edgios = "edgios/",
    Opr = "opr/",
    Opera = "opera",
    Samsung = "samsungbrowser",
    Firefox = "firefox/",
    Fxios = "fxios/",
    Chrome = "chrome/",
    Crios = "crios/",
    Chromium = "chromium/",
    Safari = "safari/",
    Version = "version/",
    Msie = "msie ",
    Trident = "trident/",
    Tablet = "tablet",
    Mobile = "mobile",
    Mobi = "mobi",
}

/// One automaton over every rule's substrings, case-insensitive: a user agent
/// is read once, not once per rule (about 280 substring searches before).
/// Pattern `i` is `TOKENS[i]`, then the previewers, then the bots.
static MATCHER: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(TOKENS.iter().chain(PREVIEWERS).chain(BOTS))
        .ok()
});

/// Which patterns a user agent contains, one bit each.
#[derive(Debug, Clone, Copy)]
struct Seen(u128);

impl Seen {
    fn of(user_agent: &str) -> Self {
        let mut bits = 0u128;
        match MATCHER.as_ref() {
            Some(m) => {
                for found in m.find_overlapping_iter(user_agent) {
                    bits |= 1 << found.pattern().as_usize();
                }
            }
            // Not reached (the patterns are fixed); kept correct all the same.
            None => {
                let ua = user_agent.to_ascii_lowercase();
                for (i, p) in TOKENS.iter().chain(PREVIEWERS).chain(BOTS).enumerate() {
                    if ua.contains(p) {
                        bits |= 1 << i;
                    }
                }
            }
        }
        Self(bits)
    }

    fn has(self, t: T) -> bool {
        self.0 & (1 << t as usize) != 0
    }

    fn any(self, ts: &[T]) -> bool {
        ts.iter().any(|t| self.has(*t))
    }

    /// Whether any pattern of the `len` starting at `from` was seen.
    fn any_in(self, from: usize, len: usize) -> bool {
        let mask = ((1u128 << len) - 1) << from;
        self.0 & mask != 0
    }
}

/// Classifies a user agent; a HEAD request is a probe whatever it claims.
pub fn classify(user_agent: &str, head: bool) -> Agent {
    const { assert!(TOKENS.len() + PREVIEWERS.len() + BOTS.len() <= 128) };
    let seen = Seen::of(user_agent);
    let bot = if head {
        "head-probe"
    } else if seen.any_in(TOKENS.len(), PREVIEWERS.len()) {
        "link-preview"
    } else if user_agent.trim().is_empty() || seen.any_in(TOKENS.len() + PREVIEWERS.len(), BOTS.len()) {
        "bot"
    } else {
        "human"
    };
    let os = if seen.any(&[T::Iphone, T::Ipad, T::Ipod]) {
        "ios"
    } else if seen.has(T::Android) {
        "android"
    } else if seen.has(T::Windows) {
        "windows"
    } else if seen.has(T::Cros) {
        "chromeos"
    } else if seen.any(&[T::MacOsX, T::Macintosh]) {
        "macos"
    } else if seen.any(&[T::Linux, T::X11]) {
        "linux"
    } else {
        "other"
    };
    let browser = if seen.any(&[T::Edg, T::Edge, T::Edga, T::Edgios]) {
        "edge"
    } else if seen.any(&[T::Opr, T::Opera]) {
        "opera"
    } else if seen.has(T::Samsung) {
        "samsung"
    } else if seen.any(&[T::Firefox, T::Fxios]) {
        "firefox"
    } else if seen.any(&[T::Chrome, T::Crios, T::Chromium]) {
        "chrome"
    } else if seen.has(T::Safari) && (seen.has(T::Version) || os == "ios") {
        "safari"
    } else if seen.any(&[T::Msie, T::Trident]) {
        "ie"
    } else {
        "other"
    };
    let device = if seen.any(&[T::Ipad, T::Tablet]) || (os == "android" && !seen.has(T::Mobile)) {
        "tablet"
    } else if seen.any(&[T::Mobi, T::Iphone, T::Ipod]) {
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

    /// The rules as written before the automaton: one substring search each.
    fn reference(user_agent: &str, head: bool) -> Agent {
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
        let browser = if ua.contains("edg/")
            || ua.contains("edge/")
            || ua.contains("edga/")
            || ua.contains("edgios/")
        {
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

    #[test]
    fn the_automaton_classifies_as_the_substring_rules_do() {
        let mut corpus = vec![
            IPHONE,
            ANDROID,
            TAB,
            EDGE,
            FIREFOX,
            MAC_SAFARI,
            "",
            "   ",
            "oha/1.16.0",
            "curl/8.5.0",
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0",
            "Mozilla/5.0 (Windows NT 6.1; Trident/7.0; rv:11.0) like Gecko",
            "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15",
            "Mozilla/5.0 (iPod touch; CPU iPhone OS 12_5 like Mac OS X) AppleWebKit/605.1.15 Version/12.1.2 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0",
            "Mozilla/5.0 (Linux; Android 13) EdgA/124.0 Mobile",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "TelegramBot (like TwitterBot)",
            "Discordbot/2.0",
            "Python-Requests/2.31",
            "Go-http-client/1.1",
            "Wget/1.21.4",
            "UptimeRobot/2.0 monitor",
            "Viber/20.0",
            "LinkedInBot/1.0",
            "Chromium/124.0 Linux",
        ];
        let shouted: Vec<String> = corpus.iter().map(|u| u.to_ascii_uppercase()).collect();
        corpus.extend(shouted.iter().map(String::as_str));
        for ua in corpus {
            for head in [false, true] {
                assert_eq!(classify(ua, head), reference(ua, head), "{ua:?}");
            }
        }
    }
}
