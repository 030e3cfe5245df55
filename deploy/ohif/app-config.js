// The OHIF Viewer of the compose stack (deploy/compose.yaml), mounted over the image's
// app-config.js. The browser reaches the server through the proxy on localhost:8080; CORS lets
// any origin read, so the viewer's own origin (localhost:3000) needs no server setting.
// The same data source as the README's OHIF section and `make e2e`'s configuration.
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'dicomweb_server',
        name: 'dicomweb_server',
        qidoRoot: 'http://localhost:8080/dicomweb',
        wadoRoot: 'http://localhost:8080/dicomweb',
        wadoUriRoot: 'http://localhost:8080/dicomweb', // unused: no WADO-URI
        qidoSupportsIncludeField: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        staticWado: false,
        singlepart: 'bulkdata,video,pdf',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
