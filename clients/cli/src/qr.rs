//! Draws a QR code as text with Unicode half blocks (`▀ ▄ █` and space), two
//! module rows per line, so it can be scanned straight off a terminal.

use qrcode::{Color, EcLevel, QrCode};

/// Smallest quiet zone drawn around the code, in modules. The standard asks
/// for 4; scanners read a terminal code reliably with 2, and it keeps the
/// drawing small enough for an 80x24 terminal.
pub const MIN_QUIET_ZONE: usize = 2;

/// Which modules the block characters paint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    /// Blocks are the light modules: right on a dark terminal background,
    /// where the character colour is light.
    Light,
    /// Blocks are the dark modules: right on a light terminal background.
    Dark,
}

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the text does not fit in a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
}

/// The drawn code: `lines` of equal width, each standing for two module rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drawing {
    pub lines: Vec<String>,
}

impl Drawing {
    /// Number of module columns (= characters per line).
    pub fn width(&self) -> usize {
        self.lines.first().map_or(0, |l| l.chars().count())
    }
}

impl std::fmt::Display for Drawing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Encodes `text` (error correction level L, as WhatsApp Web does: the
/// payload is long and a terminal is a clean medium) and draws it with a
/// quiet zone of `quiet_zone` modules (at least [`MIN_QUIET_ZONE`]).
pub fn draw(text: &str, ink: Ink, quiet_zone: usize) -> Result<Drawing, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)?;
    let size = code.width();
    let modules = code.to_colors();
    let quiet = quiet_zone.max(MIN_QUIET_ZONE);
    let full = size + 2 * quiet;
    // Module (x, y) of the padded square; outside the symbol it is light.
    // A row past the bottom edge (odd heights) is light too: it extends the
    // quiet zone by one module.
    let dark = |x: usize, y: usize| -> bool {
        let (Some(cx), Some(cy)) = (x.checked_sub(quiet), y.checked_sub(quiet)) else {
            return false;
        };
        cx < size && cy < size && modules.get(cy * size + cx) == Some(&Color::Dark)
    };
    let painted = |x: usize, y: usize| dark(x, y) == (ink == Ink::Dark);
    let lines = (0..full.div_ceil(2))
        .map(|row| {
            (0..full)
                .map(|x| match (painted(x, 2 * row), painted(x, 2 * row + 1)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                })
                .collect()
        })
        .collect();
    Ok(Drawing { lines })
}

/// Reads a drawing back into module rows (`true` = dark), the inverse of
/// [`draw`]: each character stands for two rows. `None` if a line holds
/// anything but the four drawing characters or the lines differ in width.
pub fn modules_of(lines: &[&str], ink: Ink) -> Option<Vec<Vec<bool>>> {
    let width = lines.first()?.chars().count();
    let mut rows = Vec::with_capacity(lines.len() * 2);
    for line in lines {
        let (mut top, mut bottom) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for c in line.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                _ => return None,
            };
            // Painted means dark only when the ink is dark.
            top.push(t == (ink == Ink::Dark));
            bottom.push(b == (ink == Ink::Dark));
        }
        if top.len() != width {
            return None;
        }
        rows.push(top);
        rows.push(bottom);
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes module rows with rqrr, scaling each module to 4x4 pixels on a
    /// white margin.
    fn decode(rows: &[Vec<bool>]) -> String {
        const SCALE: usize = 4;
        const MARGIN: usize = 4 * SCALE;
        let h = rows.len() * SCALE + 2 * MARGIN;
        let w = rows[0].len() * SCALE + 2 * MARGIN;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
            let (Some(mx), Some(my)) = (x.checked_sub(MARGIN), y.checked_sub(MARGIN)) else {
                return 255;
            };
            match rows.get(my / SCALE).and_then(|r| r.get(mx / SCALE)) {
                Some(true) => 0,
                _ => 255,
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "exactly one QR code");
        grids[0].decode().expect("QR decodes").1
    }

    const WA_QR: &str =
        "https://wa.me/settings/linked_devices#2@Xk3V9aVd0mS2wY+Qh1pZ3tq0N7r8sYbEo4cJ6lPzW1uA==,\
        /8pLk4cF0m4sJ8vJ2Cz8v3vN9o7l0j2Y6v3mUq1X0Q=,Yc4e2mH7x0jR5vT8kQ1pZ9wL3nB6uF2sD0aG4hJ7kE=,\
        Z2l2ZSBtZSBhIHJhbmRvbSBhZHYgc2VjcmV0IGtleQ==,CHROME";

    fn lines(d: &Drawing) -> Vec<&str> {
        d.lines.iter().map(String::as_str).collect()
    }

    #[test]
    fn drawing_decodes_back_to_the_text_in_both_inks() {
        for ink in [Ink::Light, Ink::Dark] {
            let drawing = draw(WA_QR, ink, MIN_QUIET_ZONE).expect("draw");
            let rows = modules_of(&lines(&drawing), ink).expect("only drawing characters");
            assert_eq!(decode(&rows), WA_QR, "{ink:?}");
        }
    }

    #[test]
    fn the_wrong_ink_does_not_decode_as_the_text() {
        let drawing = draw("hello", Ink::Light, MIN_QUIET_ZONE).expect("draw");
        let rows = modules_of(&lines(&drawing), Ink::Dark).expect("parse");
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(
            rows[0].len() + 8,
            rows.len() + 8,
            |x, y| match rows
                .get(y.wrapping_sub(4))
                .and_then(|r| r.get(x.wrapping_sub(4)))
            {
                Some(true) => 0,
                _ => 255,
            },
        );
        let decoded: Vec<_> = img
            .detect_grids()
            .iter()
            .filter_map(|g| g.decode().ok().map(|(_, t)| t))
            .collect();
        assert!(!decoded.contains(&"hello".to_owned()), "{decoded:?}");
    }

    #[test]
    fn two_module_rows_per_line_with_a_quiet_zone() {
        let code = QrCode::with_error_correction_level(b"hello", EcLevel::L).expect("encode");
        let size = code.width();
        for quiet in [0, 2, 3, 4] {
            let drawing = draw("hello", Ink::Dark, quiet).expect("draw");
            let q = quiet.max(MIN_QUIET_ZONE);
            assert_eq!(drawing.width(), size + 2 * q);
            assert_eq!(drawing.lines.len(), (size + 2 * q).div_ceil(2));
            assert!(drawing
                .lines
                .iter()
                .all(|l| l.chars().count() == size + 2 * q));
            // Dark ink: the quiet zone is blank, on every side.
            let rows = modules_of(&lines(&drawing), Ink::Dark).expect("parse");
            for (y, row) in rows.iter().enumerate() {
                for (x, &m) in row.iter().enumerate() {
                    let inside = (q..q + size).contains(&x) && (q..q + size).contains(&y);
                    if !inside {
                        assert!(!m, "module ({x},{y}) in the quiet zone is dark");
                    }
                }
            }
            // The top-left finder pattern starts right after the quiet zone.
            assert!(rows[q][q] && !rows[q - 1][q] && !rows[q][q - 1]);
        }
    }

    #[test]
    fn light_ink_paints_the_quiet_zone() {
        let drawing = draw("hello", Ink::Light, MIN_QUIET_ZONE).expect("draw");
        assert!(drawing.lines[0].chars().all(|c| c == '█'));
        assert!(drawing.lines.iter().all(|l| l.starts_with("██")));
    }

    #[test]
    fn anything_but_drawing_characters_is_refused() {
        assert!(modules_of(&["█▀x"], Ink::Dark).is_none());
        assert!(modules_of(&["██", "█"], Ink::Dark).is_none());
        assert!(modules_of(&[], Ink::Dark).is_none());
    }
}
