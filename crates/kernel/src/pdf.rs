//! A small PDF 1.4 writer: pages of vector shapes, text in the standard
//! Helvetica fonts (built into every reader, nothing embedded) and raster
//! images (deflated, with an optional alpha mask). Enough for QR codes and
//! one-page reports; not a layout engine.

use std::fmt::Write as _;
use std::io::Write as _;

/// An RGB colour, 0–255 per channel.
pub type Rgb = [u8; 3];

/// One page: its size in points (1/72 inch), its drawing operations and the
/// images they draw.
#[derive(Debug, Clone)]
pub struct Page {
    width: f64,
    height: f64,
    content: Vec<u8>,
    images: Vec<Image>,
}

/// A raster image: 8-bit RGB pixels, row by row from the top, with an optional
/// 8-bit alpha channel (a soft mask in the PDF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// `width × height × 3` bytes.
    pub rgb: Vec<u8>,
    /// `width × height` bytes, when the image is not opaque.
    pub alpha: Option<Vec<u8>>,
}

impl Image {
    /// From RGBA pixels; the alpha channel is kept only when some pixel is not opaque.
    pub fn from_rgba(width: u32, height: u32, rgba: &[u8]) -> Self {
        let rgb = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        let alpha: Vec<u8> = rgba.chunks_exact(4).map(|p| p[3]).collect();
        let alpha = alpha.iter().any(|&a| a != 255).then_some(alpha);
        Self { width, height, rgb, alpha }
    }
}

impl Page {
    /// An empty page of `width` × `height` points (A4 is 595 × 842).
    pub fn new(width: f64, height: f64) -> Self {
        Self { width, height, content: Vec::new(), images: Vec::new() }
    }

    /// The page height (the origin is the bottom-left corner).
    pub fn height(&self) -> f64 {
        self.height
    }

    /// A filled rectangle with its bottom-left corner at (`x`, `y`).
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Rgb) -> &mut Self {
        let _ = writeln!(self.fill_colour(fill), "{x:.3} {y:.3} {w:.3} {h:.3} re f");
        self
    }

    /// Many filled squares of one colour as a single path (a QR code's modules).
    pub fn squares(&mut self, fill: Rgb, side: f64, corners: impl Iterator<Item = (f64, f64)>) -> &mut Self {
        let out = self.fill_colour(fill);
        for (x, y) in corners {
            let _ = writeln!(out, "{x:.3} {y:.3} {side:.3} {side:.3} re");
        }
        out.extend_from_slice(b"f\n");
        self
    }

    /// One line of text with its baseline at (`x`, `y`). Characters outside
    /// Latin-1 print as `?` (the standard fonts have no others).
    pub fn text(&mut self, x: f64, y: f64, size: f64, bold: bool, fill: Rgb, text: &str) -> &mut Self {
        let font = if bold { "F2" } else { "F1" };
        let out = self.fill_colour(fill);
        let _ = write!(out, "BT /{font} {size:.1} Tf {x:.3} {y:.3} Td (");
        for c in text.chars() {
            match c {
                '(' | ')' | '\\' => out.extend_from_slice(&[b'\\', c as u8]),
                ' '..='~' => out.push(c as u8),
                // WinAnsiEncoding agrees with Latin-1 from 0xA0 up.
                '\u{a0}'..='\u{ff}' => out.push(c as u32 as u8),
                _ => out.push(b'?'),
            }
        }
        out.extend_from_slice(b") Tj ET\n");
        self
    }

    /// An image stretched over the rectangle with its bottom-left corner at (`x`, `y`).
    pub fn image(&mut self, x: f64, y: f64, w: f64, h: f64, image: Image) -> &mut Self {
        let _ = writeln!(self.content, "q {w:.3} 0 0 {h:.3} {x:.3} {y:.3} cm /Im{} Do Q", self.images.len());
        self.images.push(image);
        self
    }

    fn fill_colour(&mut self, c: Rgb) -> &mut Vec<u8> {
        let f = |v: u8| f64::from(v) / 255.0;
        let _ = writeln!(self.content, "{:.3} {:.3} {:.3} rg", f(c[0]), f(c[1]), f(c[2]));
        &mut self.content
    }
}

/// The width of `text` in Helvetica at `size` points, roughly (for right-aligning numbers).
pub fn text_width(text: &str, size: f64) -> f64 {
    // Helvetica's digits are 556/1000 em wide; letters average about the same.
    text.chars().count() as f64 * 0.556 * size
}

/// A stream object: its dictionary entries (without `/Length`) and its data.
fn stream(entries: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< {entries} /Length {} >>\nstream\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream");
    out
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(data);
    z.finish().unwrap_or_default()
}

/// Writes the pages as one PDF document.
pub fn document(pages: &[Page]) -> Vec<u8> {
    // Objects: 1 catalog, 2 page tree, 3 and 4 the fonts; then per page the
    // page, its content and its images (each followed by its soft mask).
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        Vec::new(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>".to_vec(),
    ];
    let mut kids = Vec::with_capacity(pages.len());
    for page in pages {
        let id = objects.len() + 1;
        kids.push(format!("{id} 0 R"));
        let mut next = id + 2;
        let mut xobjects = String::new();
        let mut images = Vec::new();
        for (i, img) in page.images.iter().enumerate() {
            let image_id = next;
            let size = format!(
                "/Width {} /Height {} /BitsPerComponent 8 /Filter /FlateDecode",
                img.width, img.height
            );
            let mask = match &img.alpha {
                Some(alpha) => {
                    let mask_id = image_id + 1;
                    images.push((
                        mask_id,
                        stream(
                            &format!("/Type /XObject /Subtype /Image /ColorSpace /DeviceGray {size}"),
                            &deflate(alpha),
                        ),
                    ));
                    format!(" /SMask {mask_id} 0 R")
                }
                None => String::new(),
            };
            let dict = format!("/Type /XObject /Subtype /Image /ColorSpace /DeviceRGB {size}{mask}");
            images.push((image_id, stream(&dict, &deflate(&img.rgb))));
            next = image_id + if img.alpha.is_some() { 2 } else { 1 };
            let _ = write!(xobjects, " /Im{i} {image_id} 0 R");
        }
        images.sort_by_key(|(n, _)| *n);
        let xobjects = if xobjects.is_empty() { String::new() } else { format!(" /XObject <<{xobjects} >>") };
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {:.2} {:.2}] /Contents {} 0 R \
                 /Resources << /Font << /F1 3 0 R /F2 4 0 R >>{xobjects} >> >>",
                page.width,
                page.height,
                id + 1
            )
            .into_bytes(),
        );
        let mut content = format!("<< /Length {} >>\nstream\n", page.content.len()).into_bytes();
        content.extend_from_slice(&page.content);
        content.extend_from_slice(b"endstream");
        objects.push(content);
        objects.extend(images.into_iter().map(|(_, o)| o));
    }
    objects[1] = format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()).into_bytes();
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_has_a_correct_cross_reference_table_and_escaped_text() {
        let mut page = Page::new(200.0, 100.0);
        page.text(10.0, 50.0, 12.0, true, [0, 0, 0], "a (b) \\ é ✓").rect(0.0, 0.0, 5.0, 5.0, [255, 0, 0]);
        let pdf = document(&[page.clone(), page]);
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("(a \\(b\\) \\\\ "), "{text}");
        assert!(text.contains("/Count 2"));
        // Every xref entry points at the start of its object.
        let xref_at = text.rfind("\nxref\n").map_or(0, |at| at + 1);
        assert_eq!(text[xref_at..].lines().filter(|l| l.ends_with(" n ")).count(), 8);
        for (i, line) in text[xref_at..].lines().skip(3).take(8).enumerate() {
            let offset: usize = line[..10].parse().unwrap_or(0);
            assert!(pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()), "object {}", i + 1);
        }
    }

    #[test]
    fn an_image_is_deflated_with_its_alpha_as_a_soft_mask_and_referenced_by_its_page() {
        use std::io::Read as _;
        let rgba: Vec<u8> = (0..6).flat_map(|i| [i * 40, 10, 20, if i == 0 { 0 } else { 255 }]).collect();
        let mut page = Page::new(100.0, 100.0);
        page.image(10.0, 10.0, 30.0, 20.0, Image::from_rgba(3, 2, &rgba));
        let opaque = Image::from_rgba(1, 1, &[1, 2, 3, 255]);
        assert_eq!(opaque.alpha, None, "an opaque image has no mask");
        page.image(50.0, 50.0, 5.0, 5.0, opaque);
        let pdf = document(&[page]);
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("/XObject << /Im0 7 0 R /Im1 9 0 R >>"), "{text}");
        assert!(text.contains("/Im0 Do") && text.contains("/Im1 Do"));
        assert!(text.contains("/SMask 8 0 R"));
        // Every object is where the cross-reference table says, in order.
        let xref_at = text.rfind("\nxref\n").map_or(0, |at| at + 1);
        let lines: Vec<&str> = text[xref_at..].lines().skip(3).collect();
        assert_eq!(lines.iter().filter(|l| l.ends_with(" n ")).count(), 9);
        for (i, line) in lines.iter().take(9).enumerate() {
            let offset: usize = line[..10].parse().unwrap_or(0);
            assert!(pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()), "object {}", i + 1);
        }
        // The first image's pixels inflate back to what was drawn.
        let at = text.find("7 0 obj").unwrap_or(0);
        let start = at + text[at..].find("stream\n").unwrap_or(0) + 7;
        let len: usize = text[at..]
            .split("/Length ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut pixels = Vec::new();
        let _ = flate2::read::ZlibDecoder::new(&pdf[start..start + len]).read_to_end(&mut pixels);
        let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        assert_eq!(pixels, rgb);
    }
}
