-- A QR code's optional logo: the SHA-256 of the PNG kept in object storage.
alter table links.qr_codes add column logo text;
