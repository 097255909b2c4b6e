// A look inside the chosen file before it is uploaded, read in this browser only: a few
// images of a ZIP or tar(.gz) with their folders, or a CSV's first rows. The service
// decides what the dataset is; this only helps check that it is the right file.

const IMAGE = /\.(png|jpe?g|gif|webp|bmp)$/i;
const MAX_IMAGES = 8;
const TAR_SCAN_BYTES = 64 * 1024 * 1024;

export async function preview(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".csv")) return { kind: "csv", ...(await csvHead(file)) };
  if (name.endsWith(".zip")) return { kind: "images", images: await zipImages(file) };
  if (name.endsWith(".tar")) return { kind: "images", images: await tarImages(file.stream()) };
  if (name.endsWith(".tar.gz") || name.endsWith(".tgz")) {
    return { kind: "images", images: await tarImages(file.stream().pipeThrough(new DecompressionStream("gzip"))) };
  }
  return null; // .tar.bz2 / .tar.xz: no decompressor in the browser
}

// Up to MAX_IMAGES, taken in turn from each folder so that several classes show.
function spread(entries) {
  const byFolder = new Map();
  for (const e of entries) {
    const folder = e.name.split("/").slice(0, -1).join("/") || ".";
    if (!byFolder.has(folder)) byFolder.set(folder, []);
    byFolder.get(folder).push(e);
  }
  const picked = [];
  const lists = [...byFolder.values()];
  for (let i = 0; picked.length < MAX_IMAGES && lists.some((l) => l.length > i); i++) {
    for (const l of lists) if (l[i] && picked.length < MAX_IMAGES) picked.push(l[i]);
  }
  return picked;
}

const usable = (name) => IMAGE.test(name) && !name.startsWith("__MACOSX/") && !name.split("/").pop().startsWith(".");

async function bytes(file, start, end) {
  return new DataView(await file.slice(start, end).arrayBuffer());
}

function text(view, offset, length) {
  return new TextDecoder().decode(new Uint8Array(view.buffer, view.byteOffset + offset, length));
}

// ZIP: the central directory at the end, then only the chosen entries.
async function zipImages(file) {
  const tailStart = Math.max(0, file.size - 65_557);
  const tail = await bytes(file, tailStart, file.size);
  let eocd = -1;
  for (let i = tail.byteLength - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return [];
  const cdSize = tail.getUint32(eocd + 12, true);
  const cdOffset = tail.getUint32(eocd + 16, true);
  if (cdOffset === 0xffffffff || cdSize === 0xffffffff) return []; // ZIP64: not previewed
  const cd = await bytes(file, cdOffset, cdOffset + cdSize);
  const entries = [];
  for (let p = 0; p + 46 <= cd.byteLength && cd.getUint32(p, true) === 0x02014b50; ) {
    const nameLen = cd.getUint16(p + 28, true);
    const extraLen = cd.getUint16(p + 30, true);
    const commentLen = cd.getUint16(p + 32, true);
    const name = text(cd, p + 46, nameLen);
    if (usable(name)) {
      entries.push({
        name,
        method: cd.getUint16(p + 10, true),
        size: cd.getUint32(p + 20, true),
        offset: cd.getUint32(p + 42, true),
      });
    }
    p += 46 + nameLen + extraLen + commentLen;
  }
  const out = [];
  for (const e of spread(entries)) {
    if (e.method !== 0 && e.method !== 8) continue;
    const local = await bytes(file, e.offset, e.offset + 30);
    const start = e.offset + 30 + local.getUint16(26, true) + local.getUint16(28, true);
    let blob = file.slice(start, start + e.size);
    if (e.method === 8) blob = await new Response(blob.stream().pipeThrough(new DecompressionStream("deflate-raw"))).blob();
    out.push({ name: e.name, blob });
  }
  return out;
}

// tar: 512-byte headers in sequence; reads at most TAR_SCAN_BYTES of the stream.
async function tarImages(stream) {
  const reader = stream.getReader();
  let buf = new Uint8Array(0);
  let seen = 0;
  const need = async (n) => {
    while (buf.length < n) {
      const { value, done } = await reader.read();
      if (done) return false;
      seen += value.length;
      const next = new Uint8Array(buf.length + value.length);
      next.set(buf);
      next.set(value, buf.length);
      buf = next;
    }
    return true;
  };
  const perFolder = new Map();
  const found = [];
  try {
    while (found.length < MAX_IMAGES && seen <= TAR_SCAN_BYTES && (await need(512))) {
      const header = buf.subarray(0, 512);
      if (header.every((b) => b === 0)) break;
      const field = (o, n) => new TextDecoder().decode(header.subarray(o, o + n)).replace(/\0.*$/s, "");
      const prefix = field(345, 155);
      const name = (prefix ? `${prefix}/` : "") + field(0, 100);
      const size = Number.parseInt(field(124, 12).trim() || "0", 8);
      const type = String.fromCharCode(header[156] || 48);
      const padded = Math.ceil(size / 512) * 512;
      if (!(await need(512 + padded))) break;
      const folder = name.split("/").slice(0, -1).join("/");
      const count = perFolder.get(folder) || 0;
      if ((type === "0" || type === "\0") && usable(name) && count < 2) {
        perFolder.set(folder, count + 1);
        found.push({ name, blob: new Blob([buf.slice(512, 512 + size)]) });
      }
      buf = buf.slice(512 + padded);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return found;
}

// CSV: the header and the first rows of the first 64 KB (quotes understood).
async function csvHead(file) {
  const head = await file.slice(0, 64 * 1024).text();
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < head.length && rows.length < 6; i++) {
    const c = head[i];
    if (quoted) {
      if (c === '"' && head[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && head[i + 1] === "\n") i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
    } else cell += c;
  }
  return { header: rows[0] || [], rows: rows.slice(1) };
}
