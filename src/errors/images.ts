// Names, files and downloads that do not resolve to a usable image or guest spec.
import { GuestlabError } from './guestlab-error.ts';

/** A YAML recipe or fixture is unreadable or invalid; names the file and, when known, the line. */
export class ConfigFileError extends GuestlabError {
  override name = 'ConfigFileError';
  readonly file: string;
  readonly line: number | undefined;
  constructor(file: string, line: number | undefined, problem: string, options: { cause?: unknown } = {}) {
    super(`${file}${line === undefined ? '' : `:${line}`}: ${problem}`, { ...options, code: 'ERR_CONFIG_FILE' });
    this.file = file;
    this.line = line;
  }
}

export class UnknownImageError extends GuestlabError {
  override name = 'UnknownImageError';
  readonly image: string;
  readonly known: string[];
  constructor(image: string, known: string[], dirs: string[]) {
    super(
      `Unknown image "${image}". Known images: ${known.length ? known.join(', ') : '(none)'}. ` +
        `Add ${image}.yaml (a recipe, or a download entry with url/file and digest) to one of: ${dirs.join(', ')} (or set GUESTLAB_IMAGES_PATH).`,
      { code: 'ERR_UNKNOWN_IMAGE' },
    );
    this.image = image;
    this.known = known;
  }
}

export class UnknownFixtureError extends GuestlabError {
  override name = 'UnknownFixtureError';
  constructor(fixture: string, known: string[], dirs: string[]) {
    super(
      `Unknown guest fixture "${fixture}". Known fixtures: ${known.length ? known.join(', ') : '(none)'}. ` +
        `Add ${fixture}.yaml to one of: ${dirs.join(', ')} (or set GUESTLAB_FIXTURES_PATH).`,
      { code: 'ERR_UNKNOWN_FIXTURE' },
    );
  }
}

export class ImageBuildError extends GuestlabError {
  override name = 'ImageBuildError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_IMAGE_BUILD' });
  }
}

/** A cached image's files do not match the digests recorded when it was built or imported. */
export class ImageCorruptError extends GuestlabError {
  override name = 'ImageCorruptError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { code: 'ERR_IMAGE_CORRUPT', ...options });
  }
}

/** An image archive (guestlab image export/import) is unreadable, unsafe or does not verify. */
export class ImageArchiveError extends GuestlabError {
  override name = 'ImageArchiveError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_IMAGE_ARCHIVE' });
  }
}

/** A template archive (guestlab template export/import) is unreadable, unsafe, does not verify, or its image is missing. */
export class TemplateArchiveError extends GuestlabError {
  override name = 'TemplateArchiveError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_TEMPLATE_ARCHIVE' });
  }
}

/** A download failed (wrong digest, truncated body, dropped connection) and left no file; `url` names it. */
export class DownloadError extends GuestlabError {
  override name = 'DownloadError';
  readonly url: string;
  constructor(url: string, message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_DOWNLOAD' });
    this.url = url;
  }
}
