//! A small PDF 1.4 writer: pages of vector shapes and text in the standard
//! Helvetica fonts (built into every reader, nothing embedded). Enough for QR
//! codes and one-page reports; not a layout engine.

use std::io::Write as _;

/// An RGB colour, 0–255 per channel.
pub type Rgb = [u8; 3];

/// One page: its size in points (1/72 inch) and its drawing operations.
#[derive(Debug, Clone)]
pub struct Page {
    width: f64,
    height: f64,
    content: Vec<u8>,
}

impl Page {
    /// An empty page of `width` × `height` points (A4 is 595 × 842).
    pub fn new(width: f64, height: f64) -> Self {
        Self { width, height, content: Vec::new() }
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

/// Writes the pages as one PDF document.
pub fn document(pages: &[Page]) -> Vec<u8> {
    // Objects: 1 catalog, 2 page tree, 3 and 4 the fonts, then a page and its content per page.
    let kids: Vec<String> = (0..pages.len()).map(|i| format!("{} 0 R", 5 + 2 * i)).collect();
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()).into_bytes(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>".to_vec(),
    ];
    for (i, page) in pages.iter().enumerate() {
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {:.2} {:.2}] /Contents {} 0 R \
                 /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>",
                page.width,
                page.height,
                6 + 2 * i
            )
            .into_bytes(),
        );
        let mut stream = format!("<< /Length {} >>\nstream\n", page.content.len()).into_bytes();
        stream.extend_from_slice(&page.content);
        stream.extend_from_slice(b"endstream");
        objects.push(stream);
    }
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
        let xref_at = text.rfind("xref\n").unwrap_or(0);
        for (i, line) in text[xref_at..].lines().skip(3).take(8).enumerate() {
            let offset: usize = line[..10].parse().unwrap_or(0);
            assert!(pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()), "object {}", i + 1);
        }
    }
}
