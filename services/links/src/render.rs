//! QR code images: PNG, SVG and PDF from one module matrix, with a size, a
//! quiet-zone margin, colours and an error-correction level.

use kernel::Problem;
use qrcode::{Color, EcLevel, QrCode};
use serde::Deserialize;

/// The image formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
    Pdf,
}

impl Format {
    /// From the file extension of the route.
    pub fn parse(ext: &str) -> Option<Self> {
        match ext {
            "png" => Some(Self::Png),
            "svg" => Some(Self::Svg),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Svg => "svg",
            Self::Pdf => "pdf",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Svg => "image/svg+xml",
            Self::Pdf => "application/pdf",
        }
    }
}

/// A style as asked for in the query string.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleQuery {
    pub size: Option<u32>,
    pub margin: Option<u32>,
    pub fg: Option<String>,
    pub bg: Option<String>,
    pub ec: Option<String>,
    /// Whether to put the code's logo in (default: when it has one).
    pub logo: Option<bool>,
}

/// A checked style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Style {
    /// Pixels (PNG), or user units (SVG, PDF points) of the whole image.
    pub size: u32,
    /// Quiet zone in modules.
    pub margin: u32,
    pub fg: [u8; 3],
    pub bg: [u8; 3],
    pub ec: char,
}

fn colour(field: &str, raw: Option<&str>, default: [u8; 3]) -> Result<[u8; 3], Problem> {
    let Some(raw) = raw else { return Ok(default) };
    let hex = raw.trim_start_matches('#');
    let bad = || Problem::validation(field, "is a colour like 1a2b3c");
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
    Ok([byte(0)?, byte(2)?, byte(4)?])
}

impl Default for Style {
    /// 512 pixels, a 4-module quiet zone, black on white, error correction M.
    fn default() -> Self {
        Self { size: 512, margin: 4, fg: [0, 0, 0], bg: [255, 255, 255], ec: 'M' }
    }
}

impl Style {
    /// Checks a query: size 64–4096, margin 0–16, colours in hex, ec L/M/Q/H;
    /// what it leaves out is as in [`Style::default`].
    pub fn parse(q: &StyleQuery) -> Result<Self, Problem> {
        let d = Self::default();
        let size = q.size.unwrap_or(d.size);
        if !(64..=4096).contains(&size) {
            return Err(Problem::validation("size", "is 64 to 4096"));
        }
        let margin = q.margin.unwrap_or(d.margin);
        if margin > 16 {
            return Err(Problem::validation("margin", "is 0 to 16 modules"));
        }
        let ec = match q.ec.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None => d.ec,
            Some("L") => 'L',
            Some("M") => 'M',
            Some("Q") => 'Q',
            Some("H") => 'H',
            Some(_) => return Err(Problem::validation("ec", "is L, M, Q or H")),
        };
        let fg = colour("fg", q.fg.as_deref(), d.fg)?;
        let bg = colour("bg", q.bg.as_deref(), d.bg)?;
        Ok(Self { size, margin, fg, bg, ec })
    }

    /// A stable text of the style, part of the content address.
    pub fn key(&self) -> String {
        let hex = |c: [u8; 3]| format!("{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
        format!("s{}-m{}-f{}-b{}-e{}", self.size, self.margin, hex(self.fg), hex(self.bg), self.ec)
    }
}

/// The module matrix (true = dark) and its width.
fn matrix(data: &str, ec: char) -> Result<(Vec<bool>, usize), Problem> {
    let level = match ec {
        'L' => EcLevel::L,
        'Q' => EcLevel::Q,
        'H' => EcLevel::H,
        _ => EcLevel::M,
    };
    let code = QrCode::with_error_correction_level(data.as_bytes(), level)
        .map_err(|_| Problem::validation("url", "is too long for a QR code"))?;
    let width = code.width();
    Ok((code.to_colors().into_iter().map(|c| c == Color::Dark).collect(), width))
}

/// A decoded logo: RGBA pixels.
#[derive(Debug, Clone)]
pub struct Logo {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
    /// The PNG as uploaded (SVG embeds it).
    pub png: Vec<u8>,
}

/// Largest logo upload, in bytes.
pub const MAX_LOGO_BYTES: usize = 256 * 1024;

impl Logo {
    /// Decodes a PNG of at most 1024×1024 pixels into RGBA.
    pub fn decode(bytes: &[u8]) -> Result<Self, Problem> {
        let bad = || Problem::validation("logo", "is not a PNG image of at most 1024×1024 pixels");
        let mut decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(::png::Transformations::EXPAND | ::png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|_| bad())?;
        let (w, h) = (reader.info().width as usize, reader.info().height as usize);
        if w == 0 || h == 0 || w > 1024 || h > 1024 {
            return Err(bad());
        }
        let mut buf = vec![0; reader.output_buffer_size().ok_or_else(bad)?];
        let info = reader.next_frame(&mut buf).map_err(|_| bad())?;
        let channels = match info.color_type {
            ::png::ColorType::Rgba => 4,
            ::png::ColorType::Rgb => 3,
            ::png::ColorType::GrayscaleAlpha => 2,
            ::png::ColorType::Grayscale => 1,
            ::png::ColorType::Indexed => return Err(bad()),
        };
        let mut rgba = Vec::with_capacity(w * h * 4);
        for px in buf[..w * h * channels].chunks(channels) {
            rgba.extend_from_slice(&match channels {
                4 => [px[0], px[1], px[2], px[3]],
                3 => [px[0], px[1], px[2], 255],
                2 => [px[0], px[0], px[0], px[1]],
                _ => [px[0], px[0], px[0], 255],
            });
        }
        Ok(Self { width: w, height: h, rgba, png: bytes.to_vec() })
    }
}

/// The side of the logo, in modules: about a fifth of the code, which error
/// correction H (30% recoverable) absorbs.
fn logo_modules(width: usize) -> usize {
    let side = width / 5;
    if side % 2 == width % 2 { side } else { side.saturating_sub(1) }
}

/// Renders `data` in `format` and `style`, with an optional logo in the middle
/// (error correction is then forced to H).
pub fn render(data: &str, format: Format, style: &Style, logo: Option<&Logo>) -> Result<Vec<u8>, Problem> {
    let ec = if logo.is_some() { 'H' } else { style.ec };
    let (dark, width) = matrix(data, ec)?;
    let total = width + 2 * style.margin as usize;
    let at = |x: usize, y: usize| {
        let m = style.margin as usize;
        x >= m && y >= m && x - m < width && y - m < width && dark[(y - m) * width + (x - m)]
    };
    // The logo's square (in modules), centred, with the modules under it cleared.
    let hole = logo.map(|_| {
        let side = logo_modules(width);
        let start = style.margin as usize + (width - side) / 2;
        (start, side)
    });
    let inside = |x: usize, y: usize| hole.is_some_and(|(s, n)| x >= s && y >= s && x < s + n && y < s + n);
    let at = |x: usize, y: usize| at(x, y) && !inside(x, y);
    match format {
        Format::Png => png(total, &at, style, logo.zip(hole)),
        Format::Svg => Ok(svg(total, &at, style, logo.zip(hole)).into_bytes()),
        Format::Pdf => Ok(pdf(total, &at, style, logo.zip(hole))),
    }
}

fn png(
    total: usize,
    at: &dyn Fn(usize, usize) -> bool,
    style: &Style,
    logo: Option<(&Logo, (usize, usize))>,
) -> Result<Vec<u8>, Problem> {
    // Whole pixels per module: the image is as close to `size` as that allows.
    let scale = (style.size as usize / total).max(1);
    let side = total * scale;
    let mut pixels = Vec::with_capacity(side * side * 3);
    for py in 0..side {
        for px in 0..side {
            let c = if at(px / scale, py / scale) { style.fg } else { style.bg };
            pixels.extend_from_slice(&c);
        }
    }
    if let Some((l, (start, n))) = logo {
        // Scaled (nearest neighbour) into the hole, blended over the background.
        let (x0, box_side) = (start * scale, n * scale);
        let fit = (box_side as f64 / l.width.max(l.height) as f64).min(1e9);
        let (w, h) = ((l.width as f64 * fit) as usize, (l.height as f64 * fit) as usize);
        let (ox, oy) = (x0 + (box_side - w) / 2, x0 + (box_side - h) / 2);
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = ((x as f64 / fit) as usize, (y as f64 / fit) as usize);
                let i = (sy.min(l.height - 1) * l.width + sx.min(l.width - 1)) * 4;
                let a = u16::from(l.rgba[i + 3]);
                let o = ((oy + y) * side + (ox + x)) * 3;
                for c in 0..3 {
                    let blended = (u16::from(l.rgba[i + c]) * a + u16::from(pixels[o + c]) * (255 - a)) / 255;
                    pixels[o + c] = blended as u8;
                }
            }
        }
    }
    let mut out = Vec::new();
    let side32 = u32::try_from(side).map_err(|_| Problem::internal())?;
    let mut enc = ::png::Encoder::new(&mut out, side32, side32);
    enc.set_color(::png::ColorType::Rgb);
    enc.set_depth(::png::BitDepth::Eight);
    let written = enc.write_header().and_then(|mut w| w.write_image_data(&pixels));
    written.map_err(|_| Problem::internal())?;
    Ok(out)
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn svg(
    total: usize,
    at: &dyn Fn(usize, usize) -> bool,
    style: &Style,
    logo: Option<(&Logo, (usize, usize))>,
) -> String {
    let mut path = String::new();
    for y in 0..total {
        for x in 0..total {
            if at(x, y) {
                path.push_str(&format!("M{x} {y}h1v1h-1z"));
            }
        }
    }
    let image = logo.map_or_else(String::new, |(l, (start, n))| {
        use base64::Engine as _;
        format!(
            "<image x=\"{start}\" y=\"{start}\" width=\"{n}\" height=\"{n}\" preserveAspectRatio=\"xMidYMid meet\" href=\"data:image/png;base64,{}\"/>",
            base64::engine::general_purpose::STANDARD.encode(&l.png)
        )
    });
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{s}\" height=\"{s}\" viewBox=\"0 0 {total} {total}\" shape-rendering=\"crispEdges\"><rect width=\"{total}\" height=\"{total}\" fill=\"{bg}\"/><path fill=\"{fg}\" d=\"{path}\"/>{image}</svg>",
        s = style.size,
        bg = hex(style.bg),
        fg = hex(style.fg),
    )
}

/// A one-page PDF drawing the modules as filled squares (vector, any zoom),
/// with the logo as an image (its transparency kept) in the cleared square.
fn pdf(
    total: usize,
    at: &dyn Fn(usize, usize) -> bool,
    style: &Style,
    logo: Option<(&Logo, (usize, usize))>,
) -> Vec<u8> {
    let side = f64::from(style.size);
    let unit = side / total as f64;
    let mut page = kernel::pdf::Page::new(side, side);
    page.rect(0.0, 0.0, side, side, style.bg);
    // PDF's origin is bottom-left.
    let modules = (0..total)
        .flat_map(|y| (0..total).map(move |x| (x, y)))
        .filter(|&(x, y)| at(x, y))
        .map(|(x, y)| (x as f64 * unit, side - (y as f64 + 1.0) * unit));
    page.squares(style.fg, unit, modules);
    if let Some((l, (start, n))) = logo {
        let (box_side, fit) = (n as f64 * unit, n as f64 * unit / l.width.max(l.height) as f64);
        let (w, h) = (l.width as f64 * fit, l.height as f64 * fit);
        let x = start as f64 * unit + (box_side - w) / 2.0;
        let y = side - (start as f64 * unit) - box_side + (box_side - h) / 2.0;
        let (iw, ih) = (u32::try_from(l.width).unwrap_or(0), u32::try_from(l.height).unwrap_or(0));
        page.image(x, y, w, h, kernel::pdf::Image::from_rgba(iw, ih, &l.rgba));
    }
    kernel::pdf::document(&[page])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_png(bytes: &[u8]) -> String {
        let decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap_or_else(|e| unreachable!("{e}"));
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let info = reader.next_frame(&mut buf).unwrap_or_else(|e| unreachable!("{e}"));
        let (w, h) = (info.width as usize, info.height as usize);
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
            let i = (y * w + x) * 3;
            ((u16::from(buf[i]) + u16::from(buf[i + 1]) + u16::from(buf[i + 2])) / 3) as u8
        });
        let grids = img.detect_grids();
        grids.first().and_then(|g| g.decode().ok()).map(|(_, text)| text).unwrap_or_default()
    }

    #[test]
    fn an_independent_decoder_reads_the_png_back() {
        let url = "https://sgn.test/q/Ab3dE9xY";
        for q in [
            StyleQuery::default(),
            StyleQuery {
                size: Some(200),
                margin: Some(2),
                fg: Some("1a237e".into()),
                bg: Some("fffde7".into()),
                ec: Some("H".into()),
                logo: None,
            },
        ] {
            let png =
                render(url, Format::Png, &Style::parse(&q).unwrap_or_else(|e| unreachable!("{e}")), None)
                    .unwrap_or_default();
            assert_eq!(decode_png(&png), url);
        }
    }

    #[test]
    fn a_logo_forces_error_correction_h_and_the_code_still_reads() {
        let mut logo_png = Vec::new();
        {
            let mut enc = ::png::Encoder::new(&mut logo_png, 40, 40);
            enc.set_color(::png::ColorType::Rgba);
            enc.set_depth(::png::BitDepth::Eight);
            let data: Vec<u8> = (0..40 * 40).flat_map(|_| [200u8, 30, 30, 255]).collect();
            let _ = enc.write_header().and_then(|mut w| w.write_image_data(&data));
        }
        let logo = Logo::decode(&logo_png).unwrap_or_else(|e| unreachable!("{e}"));
        let url = "https://sgn.test/q/Ab3dE9xY";
        let style = Style::parse(&StyleQuery { ec: Some("L".into()), ..StyleQuery::default() })
            .unwrap_or_else(|e| unreachable!("{e}"));
        let with = render(url, Format::Png, &style, Some(&logo)).unwrap_or_default();
        let without = render(url, Format::Png, &style, None).unwrap_or_default();
        assert_ne!(with, without);
        assert_eq!(decode_png(&with), url, "readable through the logo");
        assert!(Logo::decode(b"not a png").is_err());
        // The PDF carries the logo as an image drawn inside the code.
        let pdf = String::from_utf8_lossy(&render(url, Format::Pdf, &style, Some(&logo)).unwrap_or_default())
            .into_owned();
        assert!(pdf.contains("/Subtype /Image") && pdf.contains("/Width 40 /Height 40"), "{pdf:.400}");
        assert!(pdf.contains("/Im0 Do"));
        let plain =
            String::from_utf8_lossy(&render(url, Format::Pdf, &style, None).unwrap_or_default()).into_owned();
        assert!(!plain.contains("/Subtype /Image"));
    }

    #[test]
    fn svg_and_pdf_are_well_formed_and_styles_are_checked() {
        let style = Style::parse(&StyleQuery::default()).unwrap_or_else(|e| unreachable!("{e}"));
        let svg =
            String::from_utf8(render("https://x.test/q/a", Format::Svg, &style, None).unwrap_or_default())
                .unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>") && svg.contains("fill=\"#000000\""));
        let pdf = render("https://x.test/q/a", Format::Pdf, &style, None).unwrap_or_default();
        assert!(pdf.starts_with(b"%PDF-1.4") && pdf.ends_with(b"%%EOF\n"));
        for bad in [
            StyleQuery { size: Some(10), ..StyleQuery::default() },
            StyleQuery { margin: Some(50), ..StyleQuery::default() },
            StyleQuery { fg: Some("red".into()), ..StyleQuery::default() },
            StyleQuery { ec: Some("X".into()), ..StyleQuery::default() },
        ] {
            assert!(Style::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
