// COCO RLE in the browser: the compressed `counts` string of a mask record -> the mask's pixels.
//
// The string format is pycocotools' (maskApi.c, rleToString/rleFrString): each run length is written in
// 5-bit groups, least significant first, each group + 48 as one character, bit 0x20 meaning "more groups
// follow" and bit 0x10 of the last group the sign; from the third run on, the value is the difference to
// the run two places back. Runs alternate background/foreground, starting with background, and walk the
// mask column by column (Fortran order). Written here from that description; checked against pycocotools
// in tests/web.

/** Run lengths of a compressed COCO RLE string. @param {string} s @returns {number[]} */
export function decodeCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw new Error("truncated RLE string");
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/**
 * The mask of a record as a row-major Uint8Array of height*width (1 = sounding).
 * @param {{size: [number, number], counts: string}} record  size is [height, width]
 */
export function decodeMask(record) {
  return decodeInto(new Uint8Array(record.size[0] * record.size[1]), record.size, record.counts, 1);
}

/**
 * The class map of a record: for a semantic (AVSS) record each pixel holds its class_id (0 = background),
 * from its `segments`; a binary record gives 0/1 as `decodeMask`.
 */
export function decodeLabels(record) {
  if (!record.segments) return decodeMask(record);
  const labels = new Uint8Array(record.size[0] * record.size[1]);
  for (const segment of record.segments) decodeInto(labels, record.size, segment.counts, segment.class_id);
  return labels;
}

function decodeInto(mask, size, rle, value) {
  const [h, w] = size;
  const counts = decodeCounts(rle);
  let i = 0; // position in column-major order
  for (let r = 0; r < counts.length; r += 1) {
    const n = counts[r];
    if (r % 2 === 1) {
      for (let j = i; j < i + n && j < h * w; j += 1) {
        const col = Math.floor(j / h);
        mask[(j - col * h) * w + col] = value;
      }
    }
    i += n;
  }
  if (i !== h * w) throw new Error(`RLE covers ${i} pixels, the mask has ${h * w}`);
  return mask;
}
