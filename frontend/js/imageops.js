// Display filters for projections (the data are never changed, only how they are shown).
//
// The server contrast-normalises each projection by its min and max, as the paper
// does. A handful of extreme pixels then squeeze everything else into a narrow grey
// band. "auto" contrast keeps zero where it is (the background grey, estimated as
// the median value) and stretches symmetrically so that 99.5% of the pixels that
// differ from it use the full range — like the Deep Visualization Toolbox's "norm".

/** Stretch an image Blob; resolves with a PNG Blob of the same size. */
export async function autoContrast(blob) {
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close?.();
  const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
  stretchImageData(image);
  ctx.putImageData(image, 0, 0);
  return new Promise((resolve, reject) =>
    canvas.toBlob((out) => (out ? resolve(out) : reject(new Error("could not encode the image"))), "image/png"),
  );
}

/** In place: median-centred symmetric stretch to the 99.5th percentile of |v - median|. */
export function stretchImageData(image) {
  const px = image.data;
  const hist = new Uint32Array(256);
  let count = 0;
  for (let i = 0; i < px.length; i += 4) {
    hist[px[i]]++;
    hist[px[i + 1]]++;
    hist[px[i + 2]]++;
    count += 3;
  }
  let median = 0;
  for (let acc = 0; median < 256; median++) {
    acc += hist[median];
    if (acc * 2 >= count) break;
  }
  const dev = new Uint32Array(256);
  let moving = 0;
  for (let v = 0; v < 256; v++) {
    const d = Math.abs(v - median);
    if (d > 0) {
      dev[d] += hist[v];
      moving += hist[v];
    }
  }
  if (!moving) return image;
  let spread = 1;
  for (let acc = 0; spread < 256; spread++) {
    acc += dev[spread];
    if (acc >= moving * 0.995) break;
  }
  spread = Math.max(spread, 1);
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) lut[v] = 128 + ((v - median) * 127) / spread;
  for (let i = 0; i < px.length; i += 4) {
    px[i] = lut[px[i]];
    px[i + 1] = lut[px[i + 1]];
    px[i + 2] = lut[px[i + 2]];
  }
  return image;
}
